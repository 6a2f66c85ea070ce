"""The offline ``dvc plots show`` template: builder unit tests, and a real render in headless Chromium.

The render test runs ``dvc plots show`` in a throwaway project copy with the template built from the
npm packages (``package-lock.json``), opens the page in headless Chromium with every host name
unresolvable, and proves from inside the page that each vega plot rendered (vega-embed resolved,
axis and plot titles drawn, ink on the canvas) and each PNG plot loaded. A negative control shows
DVC's default page (CDN scripts) renders nothing under the same conditions.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from dvc_render.base import Renderer

from sp2dpo import cli
from sp2dpo.report import plots_html
from tests.conftest import CHROMIUM_BASE_FLAGS, ROOT, copy_project, find_chromium, run

DVC = str(Path(sys.executable).parent / "dvc")
PYTHON = sys.executable
TEMPLATE = "build/plots/template.html"

# -- builder unit tests ------------------------------------------------------------------------


def fake_node_modules(root: Path, versions: dict[str, str] | None = None) -> Path:
    """A ``node_modules`` with tiny stand-ins for the three builds."""
    versions = versions or {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
    for package, rel in plots_html.BUILDS:
        folder = root / package
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text(
            json.dumps({"name": package, "version": versions[package]})
        )
        (folder / rel).write_text(f"window.{package.replace('-', '_')} = 1; // </script> <!-- x")
    return root


def test_package_json_pins_exact_vega_lite_v5_versions():
    pinned = plots_html.pinned_versions(ROOT / "package.json")
    assert set(pinned) == {"vega", "vega-lite", "vega-embed"}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in pinned.values()), pinned
    # dvc_render's templates declare "$schema": ".../vega-lite/v5.json" and load vega 5 / vega-embed 6.
    assert pinned["vega"].startswith("5.") and pinned["vega-lite"].startswith("5.")
    assert pinned["vega-embed"].startswith("6.")
    lock = json.loads((ROOT / "package-lock.json").read_text())
    for package, version in pinned.items():
        assert lock["packages"][f"node_modules/{package}"]["version"] == version


def test_template_inlines_builds_in_order_and_keeps_dvc_placeholders(tmp_path):
    out = plots_html.write_template(
        tmp_path / "out" / "template.html",
        fake_node_modules(tmp_path / "nm"),
        package_json=ROOT / "package.json",
    )
    text = out.read_text(encoding="utf-8")
    assert "{plot_divs}" in text and "{refresh_tag}" in text
    assert "{scripts}" not in text  # DVC would put its CDN <script src=...> tags there
    assert (
        text.index("window.vega =")
        < text.index("window.vega_lite =")
        < text.index("window.vega_embed =")
    )
    assert "<\\/script>" in text and "<\\!-- x" in text
    assert text.count("</script>") == 3  # one per build: the inlined code cannot close its element
    assert '<meta charset="utf-8">' in text
    assert not re.search(r"\bsrc\s*=", text)


def test_template_is_accepted_by_dvc_render_and_has_no_cdn_scripts(tmp_path):
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    template = plots_html.write_template(
        tmp_path / "t.html", fake_node_modules(tmp_path / "nm"), None
    )
    renderer = VegaRenderer([{"x": 1, "y": 2, "rev": "workspace"}], "plot.csv", x="x", y="y")
    page = Path(
        render_html([renderer], tmp_path / "show" / "index.html", html_template=template)
    ).read_text()
    assert "cdn.jsdelivr.net" in VegaRenderer.SCRIPTS  # what the template keeps out
    assert "cdn.jsdelivr.net" not in page and "<script src" not in page
    assert "vegaEmbed('#plot_csv'" in page


def test_missing_node_modules_says_run_npm_ci(tmp_path, capsys):
    with pytest.raises(plots_html.MissingBuildError, match=r"run `npm ci`"):
        plots_html.write_template(tmp_path / "t.html", tmp_path / "node_modules", None)
    assert not (tmp_path / "t.html").exists()
    status = cli.main(
        ["plots-template", "--node-modules", str(tmp_path / "none"), "-o", str(tmp_path / "t.html")]
    )
    assert status == 2
    assert "run `npm ci`" in capsys.readouterr().err


def test_stale_node_modules_version_is_refused(tmp_path):
    nm = fake_node_modules(
        tmp_path / "nm", {"vega": "5.20.2", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
    )
    with pytest.raises(
        plots_html.MissingBuildError, match=r"5\.20\.2 but package.json pins 5\.33\.1"
    ):
        plots_html.write_template(tmp_path / "t.html", nm, ROOT / "package.json")


def test_dvc_placeholder_inside_a_build_is_refused():
    with pytest.raises(ValueError, match="plot_divs"):
        plots_html.inline_script("var s = '{plot_divs}';", "evil")


# -- the real render ---------------------------------------------------------------------------

#: Chromium flags: headless, nothing that phones home, and no host resolves (a CDN script
#: cannot load).
CHROMIUM_FLAGS = (
    *CHROMIUM_BASE_FLAGS,
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=10000",
)

#: Injected first in <head>: records script errors, rejected promises, console errors/warnings.
PROBE_HEAD = """
window.__probe = {errors: [], warnings: [], embeds: []};
window.addEventListener("error", (e) => __probe.errors.push("error: " + (e.message
    || (e.target && (e.target.src || e.target.outerHTML)) || e)), true);
window.addEventListener("unhandledrejection", (e) => __probe.errors.push("unhandled rejection: "
    + ((e.reason && e.reason.message) || e.reason)));
for (const level of ["error", "warn"]) {
  const orig = console[level].bind(console);
  console[level] = (...args) => {
    (level === "error" ? __probe.errors : __probe.warnings).push(args.map(String).join(" "));
    orig(...args);
  };
}
"""

#: Injected last in <head>, after the template's scripts: wraps vegaEmbed to see each plot's
#: outcome, its rendered texts (via view.toSVG) and the ink on its canvas; at load, writes the
#: findings as JSON into <pre id="sp2dpo-probe">, which --dump-dom prints.
PROBE_TAIL = """
(function () {
  const pending = [];
  const original = window.vegaEmbed;
  if (typeof original !== "function") {
    __probe.errors.push("vegaEmbed is not defined");
  } else {
    window.vegaEmbed = Object.assign(function (el, spec, opts) {
      const entry = {el: String(el), state: "pending"};
      __probe.embeds.push(entry);
      const done = original(el, spec, opts).then(async (result) => {
        await result.view.runAsync();
        const svg = await result.view.toSVG();
        const doc = new DOMParser().parseFromString(svg, "image/svg+xml");
        entry.texts = Array.from(doc.querySelectorAll("text")).map((t) => t.textContent);
        entry.marks = doc.querySelectorAll("[class^='mark-'], [class*=' mark-']").length;
        const canvas = document.querySelector(el + " canvas");
        if (canvas && canvas.width > 0 && canvas.height > 0) {
          const px = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
          let ink = 0;
          for (let i = 0; i < px.length; i += 4) {
            if (px[i + 3] > 0 && (px[i] < 200 || px[i + 1] < 200 || px[i + 2] < 200)) ink++;
          }
          entry.canvas = {width: canvas.width, height: canvas.height, ink: ink};
        } else {
          entry.canvas = {width: canvas ? canvas.width : -1, height: canvas ? canvas.height : -1, ink: 0};
        }
        entry.state = "ok";
      }, (err) => { entry.state = "error: " + ((err && err.message) || err); });
      pending.push(done);
      return done;
    }, original);
  }
  window.addEventListener("load", () => {
    Promise.allSettled(pending).then(() => {
      __probe.images = Array.from(document.images).map((img) => (
        {src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth}));
      __probe.resources = performance.getEntriesByType("resource").map((r) => r.name);
      const pre = document.createElement("pre");
      pre.id = "sp2dpo-probe";
      pre.textContent = JSON.stringify(__probe);
      document.body.appendChild(pre);
    });
  });
})();
"""


def node_modules_for(repo: Path) -> Path:
    """The repository's ``node_modules`` when it holds the pinned builds, else ``npm ci`` in ``repo``."""
    pinned = plots_html.pinned_versions(repo / "package.json")
    try:
        plots_html.read_builds(ROOT / "node_modules", pinned)
        return ROOT / "node_modules"
    except plots_html.MissingBuildError:
        pass
    npm = shutil.which("npm")
    assert npm, "requires_npm: the capability check found npm"
    run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=repo, timeout=300)
    return repo / "node_modules"


def spec_titles(spec: object) -> set[str]:
    """The plot title and every axis title of a filled vega-lite spec (layers included)."""
    found: set[str] = set()
    if isinstance(spec, dict):
        title = spec.get("title")
        if isinstance(title, str):
            found.add(title)
        elif isinstance(title, dict) and isinstance(title.get("text"), str):
            found.add(title["text"])
        for key, value in spec.items():
            if key != "data":
                found |= spec_titles(value)
    elif isinstance(spec, list):
        for value in spec:
            found |= spec_titles(value)
    return found


def shown_plots(repo: Path) -> tuple[dict[str, set[str]], list[str]]:
    """What `dvc plots show` renders now: vega plots (DVC's div id -> expected texts), image paths.

    Plots whose data is not produced yet (DVC reports them as errors) are left out.
    """
    shown = json.loads(run([DVC, "plots", "show", "--json"], cwd=repo).stdout)["data"]
    vega, images = {}, []
    for name, renderers in shown.items():
        for renderer in renderers:
            if renderer["type"] == "vega":
                vega[Renderer.remove_special_chars(name)] = spec_titles(renderer["content"])
            elif renderer["type"] == "image":
                images.append(name)
    return vega, images


def render_in_chromium(chromium: str, page: Path) -> tuple[str, dict]:
    """Open a probed copy of ``page`` in headless Chromium; return the DOM and the probe's findings."""
    text = page.read_text(encoding="utf-8")
    head = text.index("<head>") + len("<head>")
    text = f"{text[:head]}\n<script>{PROBE_HEAD}</script>{text[head:]}"
    end = text.rindex(
        "</head>"
    )  # the last one: vega-embed's code has "<head>...</head>" in a string
    text = f"{text[:end]}<script>{PROBE_TAIL}</script>\n{text[end:]}"
    probed = page.with_name("probed.html")  # same folder: the relative static/*.png links resolve
    probed.write_text(text, encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="sp2dpo-chromium-") as profile:
        proc = subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                probed.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    dom = proc.stdout
    found = re.search(r'<pre id="sp2dpo-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe reported nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return dom, json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
@pytest.mark.requires_chromium
@pytest.mark.requires_npm
def test_dvc_plots_show_renders_offline_in_headless_chromium(tmp_path):
    chromium = find_chromium()
    assert chromium, "requires_chromium: the capability check found Chromium"
    repo = copy_project(tmp_path / "repo")
    node_modules = node_modules_for(repo)
    run(
        [PYTHON, "-m", "sp2dpo.cli", "plots-template", "--node-modules", str(node_modules), "-o", TEMPLATE],
        cwd=repo,
    )

    # The plot data is git-tracked (cache: false), so `dvc plots show` needs no pipeline run.
    run([DVC, "plots", "show", "--html-template", TEMPLATE, "-o", "build/plots/show"], cwd=repo)
    page = repo / "build/plots/show/index.html"
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", text, re.I), (
        "a <script src=...> in the offline page"
    )
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", text, re.I)
    assert "cdn.jsdelivr.net" not in text

    vega, images = shown_plots(repo)
    aggregate = {
        f"reports/aggregate/{name}"
        for name in (
            "beta_distribution",
            "category_mix",
            "teacher_agreement",
            "disagreement",
            "tie_breaks",
        )
    }
    assert {Renderer.remove_special_chars(f"{p}.csv") for p in aggregate} <= set(vega), vega
    assert {f"{p}.png" for p in aggregate} <= set(images), images
    for div_id in vega:
        assert f"vegaEmbed('#{div_id}', spec)" in text
    for image in images:  # DVC copies each PNG to static/ and links it relatively
        static = f"static/workspace_{Path(image).with_suffix('').as_posix().replace('/', '_')}.png"
        assert f'<img src="{static}">' in text and (page.parent / static).is_file()

    dom, probe = render_in_chromium(chromium, page)
    assert probe["errors"] == [], probe["errors"]
    assert all(url.startswith("file:") for url in probe["resources"]), probe["resources"]
    embeds = {entry["el"].lstrip("#"): entry for entry in probe["embeds"]}
    # DVC also writes a div with an empty spec (`var spec = {};`) for a declared plot whose data
    # is not produced yet; those embed as empty views. Every plot with data must render.
    assert set(vega) <= set(embeds), (sorted(vega), sorted(embeds))
    assert all(entry["state"] == "ok" for entry in embeds.values()), embeds
    for div_id, titles in vega.items():
        entry = embeds[div_id]
        assert entry["state"] == "ok", (div_id, entry)
        # The plot's own title and axis titles were laid out, with data marks, and drawn.
        assert titles and titles <= set(entry["texts"]), (div_id, titles, entry["texts"])
        assert entry["marks"] >= 5, entry
        assert entry["canvas"]["width"] > 200 and entry["canvas"]["ink"] > 1000, entry
        assert re.search(rf'<div id="{div_id}"[^>]*>.*?<canvas[^>]*class="marks"', dom, re.S)
    beta_plot = embeds["reports_aggregate_beta_distribution_csv"]["texts"]
    assert {"JMAMP beta_i distribution", "bin_center", "all"} <= set(beta_plot), beta_plot
    loaded = {img["src"]: img for img in probe["images"] if img["src"].startswith("static/")}
    assert len(loaded) == len(images)
    assert all(img["complete"] and img["width"] > 100 for img in loaded.values()), loaded

    # Negative control: DVC's default page loads vega from a CDN and renders nothing offline.
    run([DVC, "plots", "show", "-o", "build/plots/default"], cwd=repo)
    _, default = render_in_chromium(chromium, repo / "build/plots/default/index.html")
    assert "vegaEmbed is not defined" in default["errors"] and default["embeds"] == []

    # `plots.html_template` in the DVC config (relative to .dvc/) makes plain `dvc plots show` use it.
    run([DVC, "config", "--local", "plots.html_template", f"../{TEMPLATE}"], cwd=repo)
    run([DVC, "plots", "show", "-o", "build/plots/plain"], cwd=repo)
    assert (repo / "build/plots/plain/index.html").read_text(encoding="utf-8") == text


def test_missing_chromium_skips_loudly_and_fails_when_capabilities_are_required(tmp_path):
    """The render test without Chromium: a loud skip and a summary line; with
    SP2DPO_REQUIRE_CAPABILITIES=1 (CI) a failure instead."""
    render = "test_dvc_plots_show_renders_offline_in_headless_chromium"
    cmd = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
           f"{ROOT}/tests/test_report_plots_html.py::{render}"]
    env = {k: v for k, v in os.environ.items() if k != "SP2DPO_REQUIRE_CAPABILITIES"}
    env["CHROME_BIN"] = str(tmp_path / "no-chromium")
    skipped = run(cmd, cwd=ROOT, env=env, check=False, timeout=300)
    assert skipped.returncode == 0, skipped.stdout
    assert "SKIPPED: Chromium not installed: run `make browser`" in skipped.stdout
    assert "1 skipped" in skipped.stdout
    assert "MISSING CAPABILITIES: chromium (1 test); those tests SKIPPED" in skipped.stdout
    failed = run(cmd, cwd=ROOT, env={**env, "SP2DPO_REQUIRE_CAPABILITIES": "1"}, check=False,
                 timeout=300)
    assert failed.returncode == 1, failed.stdout
    assert "Chromium not installed" in failed.stdout and "1 error" in failed.stdout
    assert "MISSING CAPABILITIES: chromium (1 test); those tests FAILED" in failed.stdout
