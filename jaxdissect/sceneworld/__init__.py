"""The scene world: procedural outdoor scenes with exact object and part labels.

It is the embedded default's world: the segmenter and the ProgGAN that jaxdissect dissects out of
the box are trained on these scenes, and its miniature reproductions of GAN Dissection's
experiments run in it. The scene grammar is described in the `render` module's docstring.
Scene classes made of the same objects (`scenes`), served as a dataset with exact labels
(`sceneset`), and a small VGG that tells them apart (`classifier`) carry the classifier half of
dissection (PNAS) into the same world.

Note: the package exports the function `render`, which shadows the submodule of the same name as
an attribute; reach the module's private parts, if ever needed, with
`importlib.import_module("jaxdissect.sceneworld.render")`.
"""

from jaxdissect.sceneworld.render import (CONCEPT_INDEX, CONCEPTS, LAYERS, Layout,
                                          colorize, concept_fractions, label_palette,
                                          measure_speed, render, render_with_layout,
                                          sample_grid)

__all__ = ["CONCEPTS", "CONCEPT_INDEX", "LAYERS", "Layout", "colorize", "concept_fractions",
           "label_palette", "measure_speed", "render", "render_with_layout", "sample_grid"]
