from sapis.cli import app

app(prog_name="sapis")
