"""Pruning a model to 2:4 sparsity, apart from the inference engine that runs the result: masks by
magnitude, Wanda and SparseGPT, the calibration batches they read, and the masks held while fine-tuning.

- masks: prune_2of4, the one call (a model's Linears pruned in place by magnitude, Wanda or SparseGPT),
  masks_held (the masks kept while fine-tuning);
  the scores, the masks, SparseGPT's weight updates, calibration batches from `datasets` features.
"""
