"""``platform data`` — synthesise, shard and inspect image shards."""

import typer

data_app = typer.Typer(help="Image shards: the embedded synthetic dataset, ImageFolder → shards, shard info.",
                       no_args_is_help=True)
