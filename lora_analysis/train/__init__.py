"""Training: typed configs, data, the model with LoRA, the loop, run folders of a sweep."""
