"""The page ``l1cnn serve`` answers at ``GET /``: drop an image, see the class, bar and saliency.

Self-contained HTML, CSS and JavaScript (no external scripts, fonts or network); it talks only
to the same server's ``/v1/model`` and ``/v1/predict?saliency=true``. When the server answers
401 the page asks for the token once and keeps it in a JavaScript variable (no cookie, no
storage), sending it as ``Authorization: Bearer``. ``PAGE_CSP`` allows exactly its own inline
script and style (by hash) and requests to its own origin, nothing else.
"""

import base64
import hashlib
import re

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>l1cnn: try an image</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem;
         color: #222; }
  h1 { font-size: 1.4rem; }
  #drop { display: block; border: 2px dashed #888; border-radius: 8px; padding: 2rem;
          text-align: center; cursor: pointer; }
  #drop.over { background: #eef4ff; border-color: #4C78A8; }
  #result { margin-top: 1.5rem; }
  .bar { position: relative; height: 1.4rem; background: #eee; border-radius: 4px;
         margin: .5rem 0 1.2rem; }
  #fill { position: absolute; left: 0; top: 0; bottom: 0; background: #4C78A8;
          border-radius: 4px; width: 0; }
  #marker { position: absolute; top: -4px; bottom: -4px; width: 2px; background: #E45756; }
  #marker span { position: absolute; top: 1.7rem; left: -2.5rem; width: 5rem;
                 text-align: center; font-size: .75rem; color: #E45756; }
  .views { display: flex; gap: 1rem; align-items: flex-start; }
  .stack { position: relative; flex: none; width: 224px; height: 224px; }
  .stack canvas { position: absolute; left: 0; top: 0; width: 224px; height: 224px;
                  image-rendering: pixelated; }
  #error { color: #b00020; }
  .muted { color: #666; font-size: .9rem; }
</style>
</head>
<body>
<h1>l1cnn: try an image</h1>
<p id="model" class="muted">Loading the model&hellip;</p>
<div id="auth" hidden>
  <p id="auth-message">This server needs a token.</p>
  <label>Token <input id="token" type="password" autocomplete="off" spellcheck="false"></label>
  <button id="token-ok" type="button">Use token</button>
</div>
<label id="drop" for="file">Drop an image here, or click to choose one
  <input id="file" type="file" accept="image/*" hidden>
</label>
<p id="status" class="muted"></p>
<p id="error" role="alert"></p>
<section id="result" hidden>
  <p>Predicted class: <strong id="class"></strong>
     &nbsp; probability of <span id="positive"></span>: <strong id="prob"></strong></p>
  <div class="bar" title="probability against the decision threshold">
    <div id="fill"></div><div id="marker"><span id="marker-label"></span></div>
  </div>
  <div class="views">
    <div class="stack"><canvas id="image"></canvas><canvas id="overlay"></canvas></div>
    <div class="muted">
      <label><input id="show-saliency" type="checkbox" checked> saliency overlay</label>
      <p>What the model saw (resized as in training). Red marks the regions that pushed it
         toward its answer (Grad-CAM on the last convolution).</p>
    </div>
  </div>
</section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let model = null;
let token = null;  // kept in memory only: no cookie, no storage

function auth() { return token ? { Authorization: "Bearer " + token } : {}; }

function askToken(message) {
  token = null;
  $("auth-message").textContent = message;
  $("auth").hidden = false;
  $("token").focus();
}

async function loadModel() {
  try {
    const response = await fetch("/v1/model", { headers: auth() });
    if (response.status === 401) {
      askToken(token ? "Wrong token; try again." : "This server needs a token.");
      return;
    }
    const m = await response.json();
    if (!response.ok) throw new Error(m.error || "HTTP " + response.status);
    model = m;
    $("auth").hidden = true;
    $("model").textContent = `Run ${m.run}: ${m.class_names[0]} or ${m.class_names[1]} ` +
      `(positive), ${m.image_shape.join("x")} images, threshold ${m.threshold}`;
    $("positive").textContent = m.class_names[1];
    $("marker").style.left = (100 * m.threshold) + "%";
    $("marker-label").textContent = "threshold " + m.threshold;
  } catch (err) {
    $("error").textContent = "cannot reach the model: " + err.message;
  }
}

function useToken() {
  token = $("token").value.trim() || null;
  $("token").value = "";
  if (token) loadModel();
}

$("token-ok").addEventListener("click", useToken);
$("token").addEventListener("keydown", (e) => { if (e.key === "Enter") useToken(); });
loadModel();

function draw(item) {
  const h = item.pixels.length, w = item.pixels[0].length;
  for (const id of ["image", "overlay"]) { $(id).width = w; $(id).height = h; }
  const img = $("image").getContext("2d").createImageData(w, h);
  const over = $("overlay").getContext("2d").createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const px = item.pixels[y][x], k = 4 * (y * w + x);
      const [r, g, b] = px.length === 3 ? px : [px[0], px[0], px[0]];
      img.data.set([r, g, b, 255], k);
      over.data.set([255, 0, 0, Math.round(150 * item.saliency[y][x])], k);
    }
  }
  $("image").getContext("2d").putImageData(img, 0, 0);
  $("overlay").getContext("2d").putImageData(over, 0, 0);
}

async function send(file) {
  $("error").textContent = "";
  $("status").textContent = "Predicting " + file.name + "\\u2026";
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const response = await fetch("/v1/predict?saliency=true", {
      method: "POST", body: form, headers: auth(),
    });
    if (response.status === 401) {
      askToken("The token was refused; enter it again.");
      throw new Error("the server wants a token");
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
    const item = body.predictions[0];
    $("class").textContent = item.decision === "refer"
      ? item.class + " (refer to a human: the conformal label set is not one class)"
      : item.class;
    $("prob").textContent = item.probability.toFixed(4);
    $("fill").style.width = (100 * item.probability) + "%";
    $("result").dataset.probability = String(item.probability);
    if (item.pixels) draw(item);
    $("result").hidden = false;
    $("status").textContent = "Done: " + file.name;
  } catch (err) {
    $("status").textContent = "";
    $("error").textContent = "Error: " + err.message;
  }
}

$("file").addEventListener("change", () => { if ($("file").files[0]) send($("file").files[0]); });
$("show-saliency").addEventListener("change", (e) => {
  $("overlay").style.display = e.target.checked ? "" : "none";
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""


def _inline_hash(tag: str) -> str:
    """The CSP source for the one inline ``<tag>`` of PAGE: 'sha256-...' of its exact text."""
    text = re.search(rf"<{tag}>(.*?)</{tag}>", PAGE, re.S).group(1)
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE_CSP = (
    "default-src 'none'; "
    f"script-src {_inline_hash('script')}; "
    f"style-src {_inline_hash('style')}; "
    "connect-src 'self'; "
    "img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
