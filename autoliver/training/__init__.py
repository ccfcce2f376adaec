"""Training: a plan's configuration + a named recipe → trained folds.

networks/   the architectures, built from ``NetworkSpec`` by name
losses.py   Dice + CE and the other recipe losses, deep supervision
data.py     patch batches read lazily from the preprocessed files, augmented in worker processes
splits.py   5-fold cross-validation splits (``splits_final.json``)
recipes.py  named training recipes (optimizer, schedule, loss, augmentation, sampler, length)
trainer.py  the one training loop
validation.py  full-case validation of a fold (and the cascade's next-stage predictions)
checkpoint.py  atomic, weights-only checkpoints; ``load_trained_model``
distributed.py  torchrun / DDP setup
cli.py      ``autoliver train``
"""
