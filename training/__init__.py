"""Training stage: datasets (COCO loader, shapes generator), model factory, trainer, evaluation."""
