"""Sphinx configuration of the course site (`make docs`). tools/build_site.py stages the executed
notebooks and the index page in docs/_build/src/ and runs Sphinx there with `-c docs/course`.

MyST-NB renders notebooks that tools/build_site.py has already executed and never runs one itself,
so that each notebook runs at its own size, once, and again only when its source changes."""

project = "dmat"
author = "dmat contributors"
html_show_copyright = False
html_title = "dmat: diffusion models and adversarial training, the course"

extensions = ["myst_nb"]
nb_execution_mode = "off"          # executed by tools/build_site.py, with its cache
nb_merge_streams = True            # one block per cell for the many print() lines of a cell
myst_enable_extensions = ["dollarmath"]   # the exercises write $...$ formulas
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]       # a notebook's sections may start below its title level

# No widget JavaScript: tools/build_site.py turns every widget output into static HTML from its
# saved state (a static page has no kernel to run a slider's callback), so MyST-NB is given no
# widget state and adds no require.js / html-manager scripts from a CDN.
nb_ipywidgets_js = {}

html_theme = "furo"                # maintained, its CSS and JS ship in the wheel (no CDN)
html_static_path = ["_static"]
html_css_files = ["dmat.css"]
html_copy_source = False           # the executed notebooks carry their figures: no second copy
html_show_sourcelink = False
exclude_patterns = []
