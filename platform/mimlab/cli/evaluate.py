"""``platform evaluate`` — faithfulness and localisation metrics of saliency maps."""

import typer

evaluate_app = typer.Typer(help="Score saliency maps: AD, AI, insertion, deletion, ROAD, localisation; studies.",
                           no_args_is_help=True)
