"""The inline stylesheet and script of report.html (it loads nothing from elsewhere)."""

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
.meta { color: #555; font-size: .9em; }
nav a { margin-right: 1em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #444; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
.note { color: #8a5a00; }
details { margin: .4em 0; border-left: 3px solid #ddd; padding-left: .8em; }
summary { cursor: pointer; font-weight: 600; padding: .2em 0; }
th[colspan] { text-align: center; }
caption { text-align: left; font-style: italic; padding: .2em 0; }
#render-check { color: #888; font-size: .8em; }
"""

# Counts the images that decoded (complete, with a width) once the page has loaded, so a headless
# browser's DOM dump tells whether every picture rendered.
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, rendered = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { rendered++; }
  }
  var check = document.getElementById("render-check");
  check.setAttribute("data-rendered", String(rendered));
  check.textContent = rendered + " of " + images.length + " images rendered";
});
"""
