"""The measured latency model (search.latency) and latency jobs: the table is built once per model,
device, precision and setting and read back from the artifact store; predictions are monotone and
never favour odd widths; repair keeps every candidate within the latency budget; the budget is an
Optuna constraint; a latency Pareto search returns points with predicted and measured latency.

CPU timings here are noisy (a shared two-core machine): no test asserts a timing threshold. The
table of the first two tests is timed for real; the search tests read a table of known figures from
the artifact store (where a real one would be), so their budgets are feasible whatever the noise.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

from search.arch import ArchConfig, LayerArch, ModelShape
from search.artifacts import ArtifactStore, model_fingerprint
from search.candidates import SearchContext, prepare
from search.families import read_shape
from search.latency import LATENCY_TABLE, PROBE, LatencyTable, _monotone, build_table
from search.latency_calibration import SCALE_RANGE, Point, calibration_archs, fit
from search.latency_timing import Stepper, kept_timer, least_of_passes, random_ids
from search.loading import adapter_for, load_model
from search.repair import Proposal, repair_within
from search.spec import LatencySetting, read_local_config
from search.study import run_search
from search.trials import job_proxy, open_study, search_trials
from tests.conftest import tiny_job_spec
from tests.search.test_export import FAMILIES

# A short setting and a coarse grid keep the table to about a second on the tiny model.
SETTING = {"phase": "decode", "batch": 2, "context": 16}
SPACE = {"ffn_alignment": 32}
KNOWN = {"phase": "decode", "batch": 1, "context": 8}  # the setting of the table of known figures


@pytest.fixture(scope="module", autouse=True)
def short_timings() -> Iterator[None]:
    """Each comparison of a table, calibration model and finalist timed for a few steps, not a tenth of a
    second or more: these tests check what is built and kept, not how precise it is."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("search.latency.TABLE_SECONDS", 0.0)
        patch.setattr("search.latency.CALIBRATION_SECONDS", 0.0)
        patch.setattr("search.latency_check.MEASURE_SECONDS", 0.0)
        patch.setattr("search.latency_calibration.PASSES", 1)
        patch.setattr("search.latency_check.MEASURE_PASSES", 1)
        yield


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("latency-artifacts")


def store_known_table(model: Path, artifacts: Path, alignment: int) -> LatencyTable:
    """A table of known figures, stored where a worker would keep the one it timed for ``KNOWN``."""
    shape = read_shape(read_local_config(str(model)))
    return store_table(
        model,
        artifacts,
        KNOWN,
        alignment,
        base_ms=1.0,
        attention_ms={h: 0.25 * h for h in range(0, shape.num_heads + 1, shape.group_size)},
        mlp_points={c: c / 256 for c in range(0, shape.intermediate_size + 1, 64)},
    )


def store_table(
    model: Path, artifacts: Path, setting: dict[str, object], alignment: int, **figures: object
) -> LatencyTable:
    """A table of given figures, stored where a worker would keep the one it timed for ``setting``."""
    shape = read_shape(read_local_config(str(model)))
    table = LatencyTable(
        setting=LatencySetting.model_validate(setting),
        device="cpu",
        dtype="float32",
        alignment=alignment,
        intermediate_size=shape.intermediate_size,
        build_seconds=0.0,
        **figures,  # type: ignore[arg-type]
    )
    key = ("cpu", "float32", setting["phase"], setting["batch"], setting["context"], alignment)
    ArtifactStore(artifacts, str(model), None).put(LATENCY_TABLE.file(key), LATENCY_TABLE.encode(table))
    return table


@pytest.fixture(scope="module")
def known_table(tiny_llama_dir: Path, artifacts: Path) -> LatencyTable:
    return store_known_table(tiny_llama_dir, artifacts, 32)


@pytest.fixture(scope="module")
def latency_context(tiny_llama_dir: Path, artifacts: Path) -> SearchContext:
    torch.manual_seed(0)
    spec = tiny_job_spec(
        tiny_llama_dir,
        # 1.0: feasible whatever the noise made of the sub-blocks' costs (the dense model fits).
        target={"latency_ratio": 1.0, "latency": SETTING},
        search_space=SPACE,
        n_trials=6,
        seed=2,
        verify_top_k=2,
        audit_size=0,
    )
    return prepare(load_model(str(tiny_llama_dir), artifacts=artifacts), spec)


def _table(context: SearchContext) -> LatencyTable:
    assert context.latency is not None
    return context.latency.table


def test_the_table_is_built_once_and_the_next_job_reads_it_from_the_store(
    latency_context: SearchContext, tiny_llama_dir: Path, artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _table(latency_context)
    assert first.source == "measured" and first.device == "cpu" and first.dtype == "float32"
    stored = list((artifacts / model_fingerprint(str(tiny_llama_dir), None)).glob("latency-*"))
    assert [p.name for p in stored] == ["latency-cpu-float32-decode-2-16-32.pt"]

    def rebuilt(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the latency table was timed again")

    monkeypatch.setattr("search.latency.build_table", rebuilt)
    monkeypatch.setattr("search.latency.DRIFT", float("inf"))  # however busy the machine is now (tested below)
    # Another job on the same model, device and setting, in a fresh process (a new load, empty memory).
    spec = latency_context.spec.model_copy(update={"objectives": ["score", "latency"], "sampler": "tpe"})
    second = _table(prepare(load_model(str(tiny_llama_dir), artifacts=artifacts), spec))
    assert second.source == "stored"
    assert second.attention_ms == first.attention_ms and second.mlp_points == first.mlp_points
    assert (second.base_ms, second.layer_ms, second.scale, second.width_scale) == (
        first.base_ms, first.layer_ms, first.scale, first.width_scale
    )  # fmt: skip
    assert second.calibration == first.calibration and second.calibration_error == first.calibration_error


def test_a_stored_table_whose_probe_model_now_steps_far_faster_is_timed_again(
    latency_context: SearchContext, tiny_llama_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As a table timed while the machine was busy: every calibration model 10x as long as now."""
    timed = _table(latency_context)
    busy = dataclasses.replace(
        timed, calibration=tuple(dataclasses.replace(p, measured_ms=10 * p.measured_ms) for p in timed.calibration)
    )
    key = ("cpu", "float32", SETTING["phase"], SETTING["batch"], SETTING["context"], 32)
    store = ArtifactStore(tmp_path, str(tiny_llama_dir), None)
    store.put(LATENCY_TABLE.file(key), LATENCY_TABLE.encode(busy))
    again = _table(prepare(load_model(str(tiny_llama_dir), artifacts=tmp_path), latency_context.spec))
    assert again.source == "re-timed" and "timing it again" in caplog.text
    payload = store.get(LATENCY_TABLE.file(key))
    assert payload is not None
    kept = LATENCY_TABLE.decode(payload)
    probe = {p.name: p.measured_ms for p in kept.calibration}[PROBE]
    assert probe < {p.name: p.measured_ms for p in busy.calibration}[PROBE] / 3  # the store holds the new timing


def test_the_table_is_fitted_to_whole_models_timed_at_build(latency_context: SearchContext) -> None:
    """Whole models of the family (at most about half the dense parameters each, no two alike) were
    built as exported and timed; base, per-layer cost and both scales are the fit's, within their bounds."""
    table = _table(latency_context)
    assert [p.name for p in table.calibration] == list(calibration_archs(latency_context.shape, 32))
    assert all(
        p.measured_ms > 0 and p.floor_ms > 0 and p.width_ms >= 0 and p.kept_layers >= 1 for p in table.calibration
    )
    assert any(p.width_ms > 0 for p in table.calibration)  # the dense model's widths add to its floor
    assert table.base_ms >= 0 and table.layer_ms >= 0 and SCALE_RANGE[0] <= table.scale <= SCALE_RANGE[1]
    assert 0 <= table.width_scale <= SCALE_RANGE[1]
    assert table.calibration_error is not None and table.calibration_error >= 0


def test_predicted_latency_is_monotone_in_heads_and_channels_and_odd_widths_cost_their_aligned_neighbour(
    latency_context: SearchContext,
) -> None:
    table, shape = _table(latency_context), latency_context.shape
    heads = range(0, shape.num_heads + 1, shape.group_size)
    channels = range(0, shape.intermediate_size + 1)
    for kept_heads in heads:
        predictions = [table.predict_ms([LayerArch(kept_heads, c)] * shape.num_layers) for c in channels]
        assert predictions == sorted(predictions)
    for kept_channels in (0, 32, 100, shape.intermediate_size):
        predictions = [table.predict_ms([LayerArch(h, kept_channels)] * shape.num_layers) for h in heads]
        assert predictions == sorted(predictions)
    for odd in (1, 33, 100, 255):
        aligned = -(-odd // table.alignment) * table.alignment
        assert table.mlp(odd) == table.mlp(aligned)
    assert table.predict_ms([LayerArch(0, 0)] * shape.num_layers) == table.base_ms >= 0


def _latency_context(
    model: Path, artifacts: Path, setting: dict[str, object], *, n_trials: int, verify_top_k: int
) -> SearchContext:
    """A search at 60% of the dense step in ``setting``, reading the table stored for it."""
    spec = tiny_job_spec(
        model,
        target={"latency_ratio": 0.6, "latency": setting},
        search_space=SPACE,
        n_trials=n_trials,
        seed=2,
        verify_top_k=verify_top_k,
        audit_size=0,
    )
    return prepare(load_model(str(model), artifacts=artifacts), spec)


@pytest.fixture(scope="module")
def known_context(tiny_llama_dir: Path, artifacts: Path, known_table: LatencyTable) -> SearchContext:
    context = _latency_context(tiny_llama_dir, artifacts, KNOWN, n_trials=6, verify_top_k=2)
    assert _table(context).source == "stored" and _table(context).base_ms == known_table.base_ms
    return context


def test_repair_within_lands_under_a_monotone_cap_and_keeps_the_proposal_shape(known_context: SearchContext) -> None:
    shape, model = known_context.shape, known_context.latency
    assert model is not None
    proposal = Proposal((1.0, 0.5, 0.5, 1.0), (0.25, 1.0, 0.5, 1.0))
    arch = repair_within(shape, proposal, lambda layers: model.fits(layers, 0.5), ffn_alignment=32)
    assert model.ratio(arch.layers) <= 0.5
    assert arch.layers[1].ffn_channels >= arch.layers[0].ffn_channels  # more MLP where more was proposed


def test_latency_budget_is_an_optuna_constraint_that_every_trial_meets(known_context: SearchContext) -> None:
    study = open_study(known_context, study_name="latency-constraint")
    search_trials(known_context, job_proxy(known_context), study)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 6
    for trial in trials:
        assert {"budget", "latency"} <= set(trial.constraints)
        assert trial.constraints["latency"] <= 0  # repair keeps it within the budget
        assert trial.user_attrs["latency_ratio"] <= 0.6
        arch = ArchConfig.from_dict(trial.user_attrs["arch"])
        assert trial.user_attrs["latency_ms"] == known_context.latency.predict_ms(arch.layers)  # type: ignore[union-attr]
        # optuna-dashboard reads the plain list, in the same order.
        assert trial.system_attrs["constraints"] == [trial.constraints["budget"], trial.constraints["latency"]]


def test_with_both_budgets_every_trial_meets_both(
    known_context: SearchContext, tiny_llama_dir: Path, artifacts: Path
) -> None:
    """param_ratio and latency_ratio together: the parameter budget becomes a cap, the latency budget binds."""

    store_known_table(tiny_llama_dir, artifacts, 8)
    spec = tiny_job_spec(
        tiny_llama_dir, target={"param_ratio": 0.7, "latency_ratio": 0.5, "latency": KNOWN}, n_trials=5, seed=4
    )
    context = prepare(known_context.loaded, spec)
    assert context.latency is not None and context.latency.table.alignment == 8
    study = open_study(context, study_name="both-budgets")
    search_trials(context, job_proxy(context), study)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 5
    for trial in trials:
        assert trial.user_attrs["param_ratio"] <= 0.7 * 1.01 and trial.user_attrs["latency_ratio"] <= 0.5
        assert trial.constraints["budget"] <= 0 and trial.constraints["latency"] <= 0


def test_a_latency_pareto_search_returns_points_with_predicted_and_measured_latency(
    known_context: SearchContext, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("search.latency_check.MEASURE_PASSES", 2)  # finalists materialised again for a second pass
    spec = tiny_job_spec(
        tiny_llama_dir,
        target={"latency": KNOWN},
        objectives=["score", "latency"],
        search_space=SPACE,
        n_trials=5,
        seed=1,
        verify_top_k=2,
        audit_size=0,
    )
    context = prepare(known_context.loaded, spec)
    result = run_search(context, study_name="latency-front")
    by_number = {t.number: t for t in result.trials}
    front = [by_number[n] for n in result.pareto]
    assert front and all(t.latency_ms is not None and t.values == [t.value, t.latency_ms] for t in front)
    assert result.verified and all("latency_ms" in v.metrics for v in result.verified.values())
    report = result.latency
    assert report is not None and (report.phase, report.batch, report.context) == ("decode", 1, 8)
    assert sorted(c.trial_number for c in report.finalists) == sorted(result.verified)
    for check in report.finalists:
        assert check.predicted_ms == by_number[check.trial_number].latency_ms
        assert check.measured_ms == result.verified[check.trial_number].metrics["latency_ms"] > 0
    assert report.median_abs_error is not None and report.dense.measured_ms > 0


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
        ),
    ],
)
def test_a_timed_decode_step_is_one_token_against_the_same_context_every_time(
    tiny_llama_dir: Path, device: str
) -> None:
    """On a GPU the step is a replayed graph: it must still compute the model's own next step."""
    model = load_model(str(tiny_llama_dir), device=device).adapter.model
    setting = LatencySetting(phase="decode", batch=2, context=16)
    stepper = Stepper(model, setting, causal=True)
    first = stepper.step().logits.clone()
    again = stepper.step().logits
    ids = random_ids(model.config.vocab_size, setting.batch, setting.context, torch.device(device))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        expected = model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True).logits
    assert first.shape == (setting.batch, 1, model.config.vocab_size)
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(first, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_every_familys_table_is_timed_as_replayed_graphs_on_a_gpu(
    family: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = (AutoModel if family == "bert" else AutoModelForCausalLM).from_config(FAMILIES[family])
    adapter = adapter_for(model.to("cuda", torch.bfloat16).eval())
    phase = "prefill" if family == "bert" else "decode"
    table = build_table(adapter, LatencySetting(phase=phase, batch=2, context=16), dtype=torch.bfloat16, alignment=32)
    assert table.calibration and table.predict_ms(adapter.shape.dense_arch().layers) > 0
    assert "could not be captured" not in caplog.text


class _Synchronising(nn.Module):
    """A model whose forward waits for the device (``.item()``), which no graph can hold."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, **inputs: object) -> object:
        output = self.model(**inputs)
        output.logits.sum().item()
        return output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_step_that_cannot_be_captured_is_timed_eagerly_and_says_so(
    tiny_llama_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _Synchronising(load_model(str(tiny_llama_dir), device="cuda").adapter.model)
    stepper = Stepper(model, LatencySetting(phase="prefill", batch=2, context=16), causal=True)
    assert stepper.once() > 0 and stepper.step().logits.shape[:2] == (2, 16)
    assert "a step could not be captured as a CUDA graph" in caplog.text


def test_models_are_timed_in_passes_over_all_of_them_and_each_keeps_its_least() -> None:
    """A host slow for one pass (every model timed at twice its cost) moves no figure, and a model's
    passes are the other models' timings apart (the order reversed every pass)."""
    own = {"a": 1.0, "b": 2.0, "c": 3.0}
    host = [1.0, 2.0, 1.0]
    order: list[str] = []

    def timer(name: str) -> Callable[[int], float]:
        def timed(done: int) -> float:
            order.append(name)
            return own[name] * host[done]

        return timed

    assert least_of_passes({name: timer(name) for name in own}, 3) == own
    assert order == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]


def test_a_timed_model_is_kept_between_passes_only_while_there_is_room() -> None:
    built: list[nn.Module] = []

    def build() -> nn.Module:
        built.append(nn.Linear(2, 2))
        return built[-1]

    for room, builds in ((True, 1), (False, 3)):
        built.clear()
        timed = kept_timer(build, lambda model: 1.0, passes=3, keep=lambda room=room: room)
        assert [timed(done) for done in range(3)] == [1.0] * 3 and len(built) == builds


def test_the_device_alignment_rule() -> None:
    """16-bit on a GPU: multiples of 128 channels first (tensor-core tiles), then 64 and 32; a CPU: 32."""
    from search.latency import device_alignment

    assert device_alignment(torch.device("cuda"), torch.bfloat16, 14336) == (128, 64, 32)
    assert device_alignment(torch.device("cuda"), torch.float16, 96) == (64, 32)
    assert device_alignment(torch.device("cuda"), torch.float32, 14336) == (32,)
    assert device_alignment(torch.device("cpu"), torch.bfloat16, 14336) == (32,)


def test_a_latency_job_without_an_alignment_gets_the_devices(known_context: SearchContext) -> None:
    """The spec leaves ffn_alignment null; the worker fills in its device's (32 on a CPU) before searching."""
    assert known_context.spec.search_space.alignment == 32
    unset = known_context.spec.model_copy(
        update={"search_space": known_context.spec.search_space.model_copy(update={"ffn_alignment": None})}
    )
    assert prepare(known_context.loaded, unset).spec.search_space.ffn_alignment == 32


def test_a_kept_layer_costs_its_fixed_cost_once_a_layer_that_keeps_nothing_nothing_and_width_its_own_scale() -> None:
    table = LatencyTable(
        setting=LatencySetting.model_validate(KNOWN),
        device="cpu",
        dtype="float32",
        alignment=32,
        intermediate_size=64,
        base_ms=1.0,
        attention_ms={0: 0.0, 2: 0.25},
        mlp_points={0: 0.0, 32: 0.5, 64: 1.0},
        build_seconds=0.0,
        layer_ms=0.125,
        scale=2.0,
        width_scale=0.5,
    )
    # The narrowest attention (2 heads) and MLP (32 channels) at the scale, what 64 channels add at the width's.
    assert table.predict_ms([LayerArch(0, 0)] * 3) == 1.0
    assert table.predict_ms([LayerArch(2, 64), LayerArch(0, 0)]) == 1.0 + 0.125 + 2 * (0.25 + 0.5) + 0.5 * 0.5
    assert table.predict_ms([LayerArch(2, 0), LayerArch(0, 33)]) == 1.0 + 2 * 0.125 + 2 * (0.25 + 0.5) + 0.5 * 0.5
    assert table.predict_ms([LayerArch(0, 32)]) == 1.0 + 0.125 + 2 * 0.5


def test_noise_in_one_width_is_pooled_with_its_neighbours_not_carried_to_every_wider_one() -> None:
    """A running maximum made every width after one slow draw as slow as it: tables overestimated."""
    timed = {32: 1.0, 64: 5.0, 96: 1.2, 128: 1.4, 160: 6.0, 192: 7.0}
    table = _monotone(timed)
    assert table[0] == 0.0 and list(table.values()) == sorted(set(table.values()))  # strictly increasing
    assert table[64] == pytest.approx((5.0 + 1.2 + 1.4) / 3) and table[128] == pytest.approx(table[64])
    assert (table[32], table[160], table[192]) == (1.0, 6.0, 7.0)
    assert 0 < _monotone({32: -0.2, 64: 0.5})[32] < 1e-3  # a negative draw: the least a kept width costs


def test_the_calibration_fit_recovers_base_layer_and_both_scales_and_keeps_them_in_bounds() -> None:
    def points(base: float, layer: float, scale: float, width_scale: float) -> list[Point]:
        shapes = [(8, 4.0, 2.0), (4, 4.0, 0.0), (2, 2.0, 1.0), (8, 2.5, 0.5), (8, 1.0, 3.0), (1, 0.5, 0.0)]
        return [
            Point(f"m{i}", k, floor, width, base + k * layer + scale * floor + width_scale * width)
            for i, (k, floor, width) in enumerate(shapes)
        ]

    exact = fit(points(2.0, 0.3, 1.25, 0.4), measured_layer_ms=0.0)
    assert (exact.base_ms, exact.layer_ms, exact.scale, exact.width_scale) == pytest.approx((2.0, 0.3, 1.25, 0.4))
    assert exact.error == pytest.approx(0.0, abs=1e-9)
    clipped = fit(points(2.0, 0.3, 3.0, 0.4), measured_layer_ms=0.0)  # a scale beyond the range is clipped
    assert clipped.scale == SCALE_RANGE[1] and clipped.base_ms >= 0 and clipped.layer_ms >= 0
    assert clipped.error is not None and clipped.error > 0
    cheaper_when_wider = fit(points(2.0, 0.3, 1.0, -0.3), measured_layer_ms=0.0)  # never: the table stays monotone
    assert cheaper_when_wider.width_scale == 0.0
    one_depth = [p for p in points(2.0, 0.3, 1.0, 1.0) if p.kept_layers == 8]  # base and layer cannot be told apart
    assert fit(one_depth, measured_layer_ms=0.3).layer_ms == 0.3


LLAMA_8B = ModelShape(
    family="llama", model_type="llama", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
    head_dim=128, intermediate_size=14336, vocab_size=128256, qkv_bias=False, o_bias=False, mlp_bias=False,
    qk_norm=False, causal=True, gated_mlp=True, norm_bias=False, fixed=2 * 128256 * 4096 + 4096,
)  # fmt: skip


def test_one_calibration_model_timed_while_the_host_was_slow_does_not_move_the_fit() -> None:
    """A host-bound decode step timed during a slow second of the host comes out a third longer; the
    fit follows the other models (least squares moved the base from 0.7 to 0.93 ms here)."""
    arch = calibration_archs(LLAMA_8B, 128)
    assert len(set(arch.values())) == len(arch) == 11
    attention_ms, mlp_ms = 0.1, 0.44  # each sub-block's stack timing, the same at every width (host-bound)

    def timed(base: float, layer: float, scale: float, slow: str) -> list[Point]:
        points = []
        for name, model in arch.items():
            kept = [layer_ for layer_ in model.layers if layer_.heads or layer_.ffn_channels]
            subblocks = sum(attention_ms * bool(x.heads) + mlp_ms * bool(x.ffn_channels) for x in kept)
            step = (base + layer * len(kept) + scale * subblocks) * (1.35 if name == slow else 1.0)
            points.append(Point(name, len(kept), subblocks, 0.0, step))
        return points

    for slow in ("dense", "quarter depth", "one layer", "alternating", "half width"):
        robust = fit(timed(0.7, 0.05, 0.9, slow), measured_layer_ms=0.0)
        assert (robust.base_ms, robust.layer_ms, robust.scale) == pytest.approx((0.7, 0.05, 0.9), abs=1e-3)
    squares = _least_squares(timed(0.7, 0.05, 0.9, "one layer"))
    assert squares[0] > 0.9  # what the plain least squares made of it


def test_where_whole_models_step_as_long_at_every_width_the_width_weighs_nothing() -> None:
    """The 8B shape's decode on an H200: a stack's attention costs 0.41 ms at 4 heads and 0.56 ms at
    32, yet whole models at the narrowest widths step as long as the dense one (the host launches, the
    GPU waits). One scale for the whole sub-block predicted random per-layer architectures 10-14% fast;
    with the width's own scale they are predicted as they step."""
    attention = {0: 0.0} | {h: 0.41 + 0.15 * (h - 4) / 28 for h in range(4, 33, 4)}
    table = LatencyTable(
        setting=LatencySetting(phase="decode", batch=16, context=512),
        device="NVIDIA H200",
        dtype="bfloat16",
        alignment=128,
        intermediate_size=14336,
        base_ms=0.0,
        attention_ms=attention,
        mlp_points={0: 0.0, 128: 0.19, 14336: 0.22},
        build_seconds=0.0,
    )

    def step_ms(arch: ArchConfig) -> float:  # host-bound: what is kept counts, not how wide
        kept = [layer for layer in arch.layers if layer.heads or layer.ffn_channels]
        return 0.86 + 0.03 * len(kept) + 0.75 * table.split_ms(kept)[0]

    points = []
    for name, arch in calibration_archs(LLAMA_8B, 128).items():
        kept = [layer for layer in arch.layers if layer.heads or layer.ffn_channels]
        points.append(Point(name, len(kept), *table.split_ms(kept), step_ms(arch)))
    fitted = fit(points, measured_layer_ms=0.0)
    assert fitted.width_scale == pytest.approx(0.0, abs=1e-6)
    calibrated = table.with_fit(fitted)
    rng = random.Random(0)
    for _ in range(20):
        heads, channels = [0, *range(4, 33, 4)], [0, *range(128, 14337, 128)]
        arch = ArchConfig(tuple(LayerArch(rng.choice(heads), rng.choice(channels)) for _ in range(32)))
        assert calibrated.predict_ms(arch.layers) == pytest.approx(step_ms(arch), rel=1e-6)


def _least_squares(points: list[Point]) -> tuple[float, float, float]:
    rows = torch.tensor([[1.0, p.kept_layers, p.floor_ms] for p in points], dtype=torch.float64)
    steps = torch.tensor([p.measured_ms for p in points], dtype=torch.float64)
    solution = torch.linalg.lstsq(rows / steps.unsqueeze(1), torch.ones(len(points), dtype=torch.float64)).solution
    base, layer, scale = solution.tolist()
    return base, layer, scale


def test_a_budget_only_depth_can_meet_fails_the_proposals_that_cannot_and_the_search_goes_on(
    tiny_llama_dir: Path, artifacts: Path
) -> None:
    """Decoding a small model is bound by a kept layer's fixed cost (kernel launches): at 60% of the
    dense step no uniform width fits, only fewer layers. The seeds get the budget's share of the
    parameters and a proposal that cannot fit at any scale fails its trial, said why."""
    shape = read_shape(read_local_config(str(tiny_llama_dir)))
    setting = {"phase": "decode", "batch": 3, "context": 8}
    store_table(
        tiny_llama_dir,
        artifacts,
        setting,
        32,
        base_ms=0.1,
        layer_ms=10.0,
        attention_ms={h: 0.001 * h for h in range(0, shape.num_heads + 1, shape.group_size)},
        mlp_points={c: c / 1e5 for c in range(0, shape.intermediate_size + 1, 32)},
    )
    context = _latency_context(tiny_llama_dir, artifacts, setting, n_trials=8, verify_top_k=0)
    latency = context.latency
    assert latency is not None and latency.table.layer_ms == 10.0
    assert context.seed_ratio() == context.latency_high()
    study = open_study(context, study_name="latency-depth-only")
    search_trials(context, job_proxy(context), study)  # did not raise
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert complete and failed  # the uniform seed cannot fit; others do
    for trial in complete:
        assert latency.ratio(ArchConfig.from_dict(trial.user_attrs["arch"]).layers) <= 0.6
    assert all("fits the budget" in trial.user_attrs["error"] for trial in failed)
