"""Models: offline timm backbones, attention capture by hooks, and model/checkpoint loading."""
