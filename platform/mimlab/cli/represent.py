"""``platform eval`` — representation quality: k-NN and linear probing."""

import typer

eval_app = typer.Typer(help="Evaluate representations: k-NN and linear probe.", no_args_is_help=True)
