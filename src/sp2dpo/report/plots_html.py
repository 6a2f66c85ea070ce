"""An offline HTML template for ``dvc plots show``: vega, vega-lite and vega-embed inlined.

DVC's default page (``dvc_render.html.PAGE_HTML``) has a ``{scripts}`` placeholder that DVC fills
with ``<script src="https://cdn.jsdelivr.net/npm/vega@...">`` tags, so offline the page stays blank.
A custom template (``dvc plots show --html-template PATH`` or ``plots.html_template`` in
``.dvc/config``) must contain ``{plot_divs}``; ``{refresh_tag}`` and ``{scripts}`` are optional.
This module writes one that inlines the three minified builds from ``node_modules/`` (versions
pinned in ``package.json`` / ``package-lock.json``; ``npm ci`` installs them) and leaves the
``{scripts}`` placeholder out, so the CDN tags are never inserted. Each vega plot's div calls the
global ``vegaEmbed(...)``, which the inlined vega-embed build defines.

```bash
npm ci                                   # node_modules/ from package-lock.json
sp2dpo plots-template                    # -> build/plots/template.html
dvc plots show --html-template build/plots/template.html -o build/plots/show
```
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sp2dpo.core.artifacts import write_text

log = logging.getLogger(__name__)

#: npm package -> its minified browser build (a UMD bundle defining a global), in load order:
#: vega-lite needs the ``vega`` global, vega-embed both.
BUILDS: tuple[tuple[str, str], ...] = (
    ("vega", "build/vega.min.js"),
    ("vega-lite", "build/vega-lite.min.js"),
    ("vega-embed", "build/vega-embed.min.js"),
)

#: Where the template goes by default (``/build/`` is git-ignored and no DVC output).
DEFAULT_OUT = Path("build/plots/template.html")

#: Placeholders that ``dvc_render.html.HTML.embed`` replaces by plain ``str.replace``.
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

#: The page; ``{head_scripts}`` is ours (filled here), ``{refresh_tag}`` and ``{plot_divs}`` are
#: DVC's (kept literally). DVC's ``{scripts}`` placeholder is deliberately absent: it would bring
#: back the CDN script tags.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- offline dvc plots template written by sp2dpo.report.plots_html: {versions} -->
{head_scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""

_CLOSE_SCRIPT = re.compile(r"</(script)", re.IGNORECASE)


class MissingBuildError(FileNotFoundError):
    """A vega build is missing from ``node_modules`` or has another version than ``package.json``."""


@dataclass(frozen=True)
class Build:
    """One minified JS build read from ``node_modules``."""

    package: str
    version: str
    source: str


def pinned_versions(package_json: Path) -> dict[str, str]:
    """The exact versions ``package.json`` pins under ``dependencies``.

    Args:
        package_json: path of the repository's ``package.json``.

    Returns:
        package name -> version string, as written.
    """
    data = json.loads(Path(package_json).read_text(encoding="utf-8"))
    return dict(data.get("dependencies", {}))


def read_builds(node_modules: Path, pinned: Mapping[str, str] | None = None) -> list[Build]:
    """Read the vega, vega-lite and vega-embed minified builds, in load order.

    Args:
        node_modules: the ``node_modules`` folder ``npm ci`` created.
        pinned: expected versions (from :func:`pinned_versions`); a different installed version
            is an error, so a stale ``node_modules`` is never inlined silently.

    Returns:
        One :class:`Build` per entry of :data:`BUILDS`.

    Raises:
        MissingBuildError: a package or build file is missing, or its version differs from
            ``pinned``; the message says to run ``npm ci``.
    """
    node_modules = Path(node_modules)
    builds = []
    for package, rel in BUILDS:
        meta, script = node_modules / package / "package.json", node_modules / package / rel
        if not meta.is_file() or not script.is_file():
            raise MissingBuildError(
                f"{script} not found: the offline plots template needs the npm packages "
                f"vega, vega-lite and vega-embed; run `npm ci` in the repository root "
                f"(Node.js and npm required) and try again"
            )
        version = json.loads(meta.read_text(encoding="utf-8"))["version"]
        if pinned is not None and package in pinned and pinned[package] != version:
            raise MissingBuildError(
                f"{node_modules / package} is version {version} but package.json pins "
                f"{pinned[package]}: run `npm ci` in the repository root to install the locked versions"
            )
        builds.append(Build(package, version, script.read_text(encoding="utf-8")))
    return builds


def inline_script(source: str, name: str = "script") -> str:
    """Wrap JavaScript in a ``<script>`` element that is safe to inline in the DVC template.

    ``</script`` inside the code (in strings) is written ``<\\/script`` and ``<!--`` as
    ``<\\!--``, both the same string to JavaScript, so the HTML parser cannot end the element early.

    Args:
        source: the JavaScript code.
        name: what the code is, for the error message.

    Returns:
        The ``<script>`` element.

    Raises:
        ValueError: the code contains one of DVC's placeholders (``{plot_divs}`` ...), which DVC
            would replace inside the script.
    """
    for placeholder in DVC_PLACEHOLDERS:
        if placeholder in source:
            raise ValueError(
                f"{name} contains the text {placeholder!r}, which `dvc plots show` would replace "
                f"inside the inlined script; cannot build an offline template from it"
            )
    safe = _CLOSE_SCRIPT.sub(r"<\\/\1", source).replace("<!--", "<\\!--")
    return f'<script type="text/javascript">\n{safe}\n</script>'


def build_template(builds: Sequence[Build]) -> str:
    """The complete HTML template with ``builds`` inlined, in order.

    Args:
        builds: the JS builds, as :func:`read_builds` returns them.

    Returns:
        HTML containing DVC's ``{plot_divs}`` and ``{refresh_tag}`` placeholders and no
        ``{scripts}`` placeholder.
    """
    scripts = "\n".join(
        f"    <!-- {b.package} {b.version} -->\n{inline_script(b.source, f'{b.package} {b.version}')}"
        for b in builds
    )
    versions = ", ".join(f"{b.package} {b.version}" for b in builds)
    return PAGE.format(
        versions=versions,
        head_scripts=scripts,
        refresh_tag="{refresh_tag}",
        plot_divs="{plot_divs}",
    )


def write_template(
    out: Path = DEFAULT_OUT,
    node_modules: Path = Path("node_modules"),
    package_json: Path | None = Path("package.json"),
) -> Path:
    """Build the offline template from ``node_modules`` and write it atomically to ``out``.

    Args:
        out: the template path (its folder is created).
        node_modules: where ``npm ci`` installed the packages.
        package_json: the file pinning the versions (``None``: do not check versions).

    Returns:
        ``out``.
    """
    pinned = pinned_versions(package_json) if package_json is not None else None
    builds = read_builds(node_modules, pinned)
    write_text(build_template(builds), out)
    log.info("wrote %s (%s)", out, ", ".join(f"{b.package} {b.version}" for b in builds))
    return Path(out)
