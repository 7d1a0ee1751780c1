// The dashboard's entry: sign-in, then a hash router over three views (jobs, new job, one job).
import { api, auth } from "./api.js";
import { el } from "./format.js";
import { jobPage } from "./jobpage.js";
import { jobsList } from "./jobs.js";
import { newJob } from "./newjob.js";

const view = document.getElementById("view");
const signOut = document.getElementById("sign-out");
let cleanup = () => {};
let signingIn = false;  // the sign-in form reports its own 401

const ROUTES = [
  [/^#\/jobs\/([\w-]+)$/, (m) => jobPage(view, m[1])],
  [/^#\/new$/, () => newJob(view)],
  [/^(#\/jobs)?$/, () => jobsList(view)],
];

function route() {
  cleanup();
  cleanup = () => {};
  view.replaceChildren();
  if (!auth.key) {
    signIn();
    return;
  }
  signOut.hidden = false;
  for (const [pattern, show] of ROUTES) {
    const match = pattern.exec(location.hash);
    if (match) {
      cleanup = show(match) || (() => {});
      return;
    }
  }
  view.append(el("p", { role: "alert", text: `No page at ${location.hash}.` }));
}

function signIn(message) {
  signOut.hidden = true;
  const input = el("input", { id: "api-key", type: "password", autocomplete: "off", required: true,
    spellcheck: "false" });
  const alert = el("p", { class: "error", role: "alert", text: message || "" });
  const button = el("button", { type: "submit", text: "Sign in" });
  const form = el("form", { class: "card sign-in", "aria-label": "sign in" },
    el("h1", { text: "Sign in" }),
    el("p", { text: "Paste an API key (drlora serve prints one and writes it to ~/.drlora/api_key). It stays in " +
      "this tab only and is sent as a Bearer header." }),
    el("label", { for: "api-key", text: "API key" }), input, button, alert);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alert.textContent = "";
    button.disabled = true;
    signingIn = true;
    auth.set(input.value.trim());
    try {
      await api("/models");
      route();
    } catch (err) {
      auth.clear();
      alert.textContent = err.status === 401
        ? `That API key was not accepted (${err.message}). Check the key and try again.`
        : `Could not reach the service: ${err.message}`;
    } finally {
      signingIn = false;
      button.disabled = false;
    }
  });
  view.replaceChildren(form);
  input.focus();
}

window.addEventListener("drlora:unauthorized", (event) => {
  if (!auth.key || signingIn) return;
  auth.clear();
  cleanup();
  cleanup = () => {};
  signIn(`Your API key was refused (${event.detail.message}); sign in again.`);
});
signOut.addEventListener("click", () => {
  auth.clear();
  route();
});
window.addEventListener("hashchange", route);
route();
