"""Device map: a model split by decoder layer under a maximum-memory setting. The plan (balanced over
GPUs, then cpu, then disk, never splitting a layer, a clear error with the figures when the devices
are too small), and the capped-memory load running a tiny search whose scores equal the unsplit ones:
on this CPU machine split across ``cpu`` and memory-mapped ``disk``, on a GPU offloaded to the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from search.arch import ArchConfig, LayerArch
from search.candidates import prepare, prepare_job
from search.dispatch import module_bytes, run_offloaded
from search.errors import ModelLoadError, SearchError
from search.loading import LoadedModel, ModelCache, load_model
from search.masking import apply_arch
from search.placement import DevicePlan, parse_max_memory, parse_size, plan_devices
from search.study import run_search
from tests.conftest import tiny_job_spec
from tests.search.selections import random_selection

GiB = 2**30
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_sizes_and_devices_read_as_accelerate_writes_them() -> None:
    assert parse_size("60GiB") == 60 * GiB and parse_size("1.5 GB") == 1_500_000_000 and parse_size(512) == 512
    caps = parse_max_memory({"disk": "1TiB", "cpu": "100GiB", 1: "10GiB", "cuda:0": "20GiB"})
    assert list(caps) == ["cuda:0", "cuda:1", "cpu", "disk"]  # the order layers fill them
    for bad, message in [({"0": "60 parsecs"}, "not a memory size"), ({"npu": "1GiB"}, "not a device"), ({}, "no")]:
        with pytest.raises(ValueError, match=message):
            parse_max_memory(bad)


def test_the_plan_imports_without_torch_as_the_worker_settings_read_it_before_fork() -> None:
    code = "import sys, search.placement, workers.settings; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_layers_balance_over_the_gpus_and_spill_to_cpu_then_disk() -> None:
    layers = [GiB] * 8
    even = plan_devices({"cuda:0": 40 * GiB, "cuda:1": 40 * GiB}, 2 * GiB, layers, "bfloat16")
    assert even.layers == ("cuda:0",) * 4 + ("cuda:1",) * 4 and even.main == "cuda:0"  # 6 + 4 GiB: even share + 1
    assert not even.offloaded("cuda:1") and even.execution_device(7) == "cuda:1"
    spilled = plan_devices({"cuda:0": 5 * GiB, "cpu": 3 * GiB, "disk": 100 * GiB}, 2 * GiB, layers, "bfloat16")
    assert spilled.layers == ("cuda:0",) * 3 + ("cpu",) * 3 + ("disk",) * 2
    assert spilled.offloaded("cpu") and spilled.offloaded("disk") and spilled.execution_device(7) == "cuda:0"
    assert spilled.describe() == "cuda:0 layers 0-2, cpu layers 3-5, disk layers 6-7"
    on_cpu = plan_devices({"cpu": 5 * GiB, "disk": 100 * GiB}, GiB, layers, "float32")
    assert not on_cpu.offloaded("cpu") and on_cpu.offloaded("disk") and on_cpu.execution_device(0) == "cpu"


def test_too_little_memory_says_how_much_is_needed() -> None:
    with pytest.raises(ModelLoadError) as caught:  # 7 × 1.4 GiB in 2 × 5 GiB: a layer is never split
        plan_devices({"cuda:0": 5 * GiB, "cuda:1": 5 * GiB}, 0, [14 * GiB // 10] * 7, "bfloat16")
    message = str(caught.value)
    assert (
        "need 9.80 GiB in bfloat16" in message and "gives 10.00 GiB in all: cuda:0 5.00 GiB, cuda:1 5.00 GiB" in message
    )
    with pytest.raises(ModelLoadError, match="cpu must hold the embeddings and head"):
        plan_devices({"cpu": GiB, "disk": 100 * GiB}, 2 * GiB, [GiB], "float32")


def test_a_job_on_devices_too_small_fails_before_loading(tiny_llama_dir: Path) -> None:
    spec = tiny_job_spec(tiny_llama_dir)
    with pytest.raises(
        SearchError,
        match=r"the model's weights need .* in float32, but the device map gives .* in all: cpu 100.0 KiB, disk",
    ):
        prepare_job(spec, models=ModelCache(), max_memory={"cpu": "100KiB", "disk": "100KiB"})


@pytest.fixture(scope="module")
def split(tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny Llama with room on the CPU for its embeddings, head and two of its four layers: the
    other two are memory-mapped from disk."""
    layers = [module_bytes(layer) for layer in tiny_loaded.adapter.layers]
    trunk = module_bytes(tiny_loaded.adapter.model) - sum(layers)
    cap = {"cpu": trunk + layers[0] + layers[1], "disk": "1GiB"}
    return load_model(str(tiny_llama_dir), max_memory=cap, offload_folder=tmp_path_factory.mktemp("offload"))


def _file_backed(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s memory is a mapping of an offload file (unlinked at once: ``(deleted)``)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)  # address range, perms, offset, device, inode[, path]
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if start <= address < end:
            return len(fields) == 6 and "prunesearch-layer" in fields[5]
    return False


def test_the_capped_load_is_split_across_cpu_and_disk(split: LoadedModel, tiny_loaded: LoadedModel) -> None:
    assert split.plan == DevicePlan("cpu", ("cpu", "cpu", "disk", "disk"), split.plan.caps)
    weights = [split.adapter.layers[i].mlp.down_proj.weight for i in range(4)]
    assert [_file_backed(w) for w in weights] == [False, False, True, True]
    assert not any(_file_backed(p) for p in tiny_loaded.adapter.model.parameters())
    assert split.key != tiny_loaded.key  # a cache does not mistake one placement for the other


def test_candidates_on_offloaded_layers_compute_what_they_compute_unsplit(
    split: LoadedModel, tiny_loaded: LoadedModel
) -> None:
    """Gathers, dropped blocks and sparse zeros written into the mapped weights, then restored."""
    arch = ArchConfig((LayerArch(4, 256, 0.5), LayerArch(2, 0), LayerArch(2, 96, 0.3), LayerArch(0, 128, 0.5)))
    ids = torch.randint(0, 200, (2, 32), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    before = split.adapter.layers[3].mlp.down_proj.weight.clone()
    with torch.no_grad():
        outputs = []
        for loaded in (tiny_loaded, split):
            selection = random_selection(loaded, arch)
            with apply_arch(loaded.adapter, selection):
                outputs.append(loaded.adapter.forward(batch))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(split.adapter.layers[3].mlp.down_proj.weight, before)  # the zeros were undone


def test_an_offloaded_layer_runs_with_copies_of_what_it_holds_and_gets_its_tensors_back() -> None:
    """The streaming hook, on the one second device a CPU has: ``meta`` (shapes only)."""
    layer = nn.Linear(4, 3)
    stored = layer.weight
    layer.weight = nn.Parameter(stored[:, :2].detach())  # as a gather swaps it in: streamed as it is at call time
    gathered = layer.weight
    run_offloaded(layer, torch.device("meta"))
    seen: dict[str, torch.device] = {}
    layer.register_forward_pre_hook(lambda m, args: seen.update(weight=m.weight.device, input=args[0].device))
    output = layer(torch.ones(5, 2))
    assert seen == {"weight": torch.device("meta"), "input": torch.device("meta")} and output.shape == (5, 3)
    assert layer.weight is gathered and layer.bias.device.type == "cpu"
    with pytest.raises(RuntimeError):
        layer(torch.ones(5, 7))  # the forward fails: the stored tensors come back all the same
    assert layer.weight is gathered and layer.bias.device.type == "cpu"


def _search_both(whole: LoadedModel, split: LoadedModel, model: Path, proxy: str) -> list[tuple[object, object]]:
    """(unsplit trial, split trial) pairs of the same tiny search: a few trials with sparsity (zeros
    written into offloaded weights), one verified, no audits."""
    spec = tiny_job_spec(
        model,
        proxy=proxy,
        n_trials=3,
        seed=3,
        search_space={"ffn_alignment": 8, "sparsity": 0.3},
        verify_top_k=1,
        audit_size=0,
        neighbourhood_size=0,
    )
    unsplit, on_split = (
        {
            t.number: t
            for t in run_search(prepare(loaded, spec), study_name=f"{proxy}-{i}").trials
            if t.state == "complete"
        }
        for i, loaded in enumerate((whole, split))
    )
    assert len(unsplit) == spec.n_trials and unsplit.keys() == on_split.keys()
    assert any(layer["sparsity"] > 0 for t in unsplit.values() for layer in t.arch["layers"])
    return [(trial, on_split[number]) for number, trial in unsplit.items()]


@pytest.mark.parametrize("proxy", ["kl", "tracenas"])
def test_a_search_on_the_split_model_scores_as_the_unsplit_one(
    proxy: str, split: LoadedModel, tiny_loaded: LoadedModel, tiny_llama_dir: Path
) -> None:
    for unsplit, on_split in _search_both(tiny_loaded, split, tiny_llama_dir, proxy):
        assert on_split.arch == unsplit.arch  # the same scores lead the sampler the same way
        assert on_split.value == pytest.approx(unsplit.value, rel=1e-5, abs=1e-7)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("proxy", ["kl", "tracenas"])
@pytest.mark.parametrize("spill", ["cpu", "cuda:1"])
def test_a_capped_gpu_scores_as_the_whole_gpu(proxy: str, spill: str, tiny_llama_dir: Path) -> None:
    """One GPU capped to offload to the CPU; with a second GPU, a split over both."""
    if spill.startswith("cuda") and torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    whole = load_model(str(tiny_llama_dir), device="cuda")
    layers = [module_bytes(layer) for layer in whole.adapter.layers]
    trunk = module_bytes(whole.adapter.model) - sum(layers)
    capped = load_model(str(tiny_llama_dir), max_memory={"0": trunk + layers[0], spill: "1GiB"})
    assert capped.plan is not None and capped.plan.layers == ("cuda:0", spill, spill, spill)
    assert capped.adapter.layers[2].mlp.down_proj.weight.device == torch.device(spill)
    for unsplit, on_split in _search_both(whole, capped, tiny_llama_dir, proxy):
        assert on_split.value == pytest.approx(unsplit.value, rel=1e-2, abs=1e-4)  # bfloat16
