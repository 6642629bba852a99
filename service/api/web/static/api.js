// The JSON API, as the pages call it: the API key (when set) goes as a Bearer header, and every
// failure becomes an ApiError whose message a person can act on (problem+json "detail").

const KEY_STORAGE = "prunesearch.apiKey";
export const API = document.body.dataset.api || "/v1";
export const KEY_EVENT = "prunesearch:api-key";

export function getApiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage disabled (private mode, policy): work without a key
  }
}

export function setApiKey(value) {
  const key = String(value || "").trim();
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    throw new Error("This browser does not allow storing the key (local storage is disabled).");
  }
  window.dispatchEvent(new CustomEvent(KEY_EVENT, { detail: { set: Boolean(key) } }));
}

export class ApiError extends Error {
  constructor(status, title, detail, problem = null) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.title = title;
    this.problem = problem;
  }

  get needsKey() {
    return this.status === 401;
  }
}

function authHeaders() {
  const key = getApiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function describe(status, statusText, problem, text) {
  const detail = problem && typeof problem.detail === "string" ? problem.detail : "";
  if (status === 401) {
    const base = getApiKey()
      ? "The server refused the API key saved in this browser. Check it under “API key” at the top of the page."
      : "This server needs an API key. Enter yours under “API key” at the top of the page.";
    return detail ? `${base} (${detail})` : base;
  }
  if (status === 403) return detail || "Your API key does not give access to this.";
  if (detail) return detail;
  if (status >= 500) return `The server failed (HTTP ${status} ${statusText}). Its log has the details; try again.`;
  const snippet = (text || "").trim().slice(0, 200);
  return snippet ? `HTTP ${status}: ${snippet}` : `HTTP ${status} ${statusText}`.trim();
}

/**
 * Call the API. Returns {data, response}; throws ApiError on a network failure (status 0) or any
 * non-2xx answer.
 */
export async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  const allHeaders = { Accept: "application/json, application/problem+json", ...authHeaders(), ...headers };
  let payload;
  if (body !== undefined) {
    allHeaders["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: allHeaders, body: payload, signal, cache: "no-store" });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, "Network error", "The server could not be reached. Is PruneSearch running?");
  }
  const type = response.headers.get("content-type") || "";
  let data = null;
  let text = "";
  if (type.includes("json")) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  } else if (!response.ok) {
    text = await response.text().catch(() => "");
  }
  if (!response.ok && response.status !== 304) {
    const title = (data && data.title) || response.statusText || "Error";
    throw new ApiError(response.status, title, describe(response.status, response.statusText, data, text), data);
  }
  return { data, response };
}

export async function getJSON(path, options) {
  return (await request(path, options)).data;
}

const lastSeen = new Map(); // path → {etag, data}: the last answer of each polled GET

/**
 * Like getJSON, for a resource polled again and again: sends the ETag of the last answer as
 * If-None-Match and, on 304 Not Modified (nothing changed, no body sent), returns that answer's data.
 */
export async function getPolled(path, options = {}) {
  const seen = lastSeen.get(path);
  const headers = seen ? { ...(options.headers || {}), "If-None-Match": seen.etag } : options.headers;
  const { data, response } = await request(path, { ...options, headers });
  if (response.status === 304 && seen) return seen.data;
  const etag = response.headers.get("etag");
  if (etag) lastSeen.set(path, { etag, data });
  else lastSeen.delete(path);
  return data;
}

/** Like getJSON, but a route this server does not have (404, 405, 501) gives null. */
export async function getOptional(path, options) {
  try {
    return await getJSON(path, options);
  } catch (error) {
    if (error instanceof ApiError && [404, 405, 501].includes(error.status)) return null;
    throw error;
  }
}

/** Download with the key as a header (a plain link cannot send one). */
export async function fetchBlob(url) {
  let response;
  try {
    response = await fetch(url, { headers: authHeaders(), cache: "no-store" });
  } catch {
    throw new ApiError(0, "Network error", "The server could not be reached. Is PruneSearch running?");
  }
  if (!response.ok) {
    const type = response.headers.get("content-type") || "";
    const problem = type.includes("json") ? await response.json().catch(() => null) : null;
    throw new ApiError(response.status, response.statusText, describe(response.status, response.statusText, problem, ""), problem);
  }
  return response.blob();
}

export function jobPath(jobId) {
  return `${API}/jobs/${encodeURIComponent(jobId)}`;
}
