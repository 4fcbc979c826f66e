"""`python -m soul_cli`: the same app as the `soul` command."""

from soul_cli.main import app

app(prog_name="soul")
