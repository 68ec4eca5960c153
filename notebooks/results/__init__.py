"""The committed results of `python -m shendu experiment NAME`, one NAME.json each (figures,
command, commit, machine, date). They ship inside the package as `shendu.results` (see
pyproject.toml), so that a notebook opened in Colab or after `pip install shendu` finds them:
`shendu.experiments.load(NAME)` reads them with importlib.resources."""
