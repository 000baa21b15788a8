"""jaxdissect: GAN Dissection in JAX/Flax.

Finds which hidden units of a generator (or classifier) stand for which concepts, and tests it
causally by ablating and inserting units. Pure functions over pytrees throughout.
"""

from jaxdissect.intervene import ablation as ablate
from jaxdissect.model import Edit, Generator, Segmenter, apply_edit

__all__ = ["Edit", "Generator", "Segmenter", "apply_edit", "ablate"]
__version__ = "0.1.0"
