"""The files botnet reads and writes, below every other layer.

- :mod:`botnet.io.weights`: which weights file a path means (a file, a run directory, a published
  folder), reading its tensors without unpickling, and whether they fit a model;
- :mod:`botnet.io.published`: the published model folder (``config.json`` + ``model.safetensors``
  + ``README.md``, also as ``hf-hub:ORG/NAME``): finding one and reading its config;
- :mod:`botnet.io.folders`: an output folder or file is checked before any work;
- :mod:`botnet.io.atomic`: a file is replaced in one step (temporary name, fsync, rename), never
  left half-written;
- :mod:`botnet.io.dirswap`: a finished folder replaces another without a moment where neither is there.

It imports only :mod:`botnet.errors`, :mod:`botnet.validation` and :mod:`botnet.log`, so models,
data, the engine and the hub all use it.
"""
