"""``platform explain`` — saliency maps for one-off explanations."""
