"""The paint API's JSON shapes: pydantic request and response models and route annotations.

FastAPI validates requests against these models and documents every route from them
(`/openapi.json`, rendered on `/docs`), so the shapes live in one place, apart from the code that
computes the answers (`session`) and the routes (`app`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import fastapi
import pydantic

# ------------------------------------------------------------------------------------ requests

Seed = Annotated[int, pydantic.Field(ge=0, lt=2**32)]


class _Strict(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")


class Intervention(_Strict):
  """Units of one layer set to `value` with weight `alpha` (x (1 - a) + v a) inside `mask`."""

  layer: str = pydantic.Field(description="A dissected layer (see /api/layers).")
  unit: int | None = pydantic.Field(None, description="One unit (or use `units`).")
  units: list[int] | None = pydantic.Field(None, description="Several units.")
  alpha: float | list[float] = pydantic.Field(1.0, description="In [0, 1]; one or per unit.")
  value: float | list[float] = pydantic.Field(0.0, description="Level; one or per unit.")
  mask: str | None = pydantic.Field(
      None, description="PNG data URL (painted where alpha > 0) or a row-major '0'/'1' raster, "
      "at the image's size; none = everywhere.")
  pooling: Literal["max", "mean"] = pydantic.Field(
      "max", description="How the mask is pooled to the layer's grid.")


class Latents(_Strict):
  """Images given by seed (z = the first row of the z sample of that seed) or by explicit z.

  Give exactly one of `seeds` or `zs`, with 1 to `max_batch` (see /api/info) images.
  """

  seeds: list[Seed] | None = pydantic.Field(
      None, description="One image per seed (give `seeds` or `zs`).")
  zs: list[list[float]] | None = pydantic.Field(
      None, description="One image per latent of `zdim` numbers (give `seeds` or `zs`).")


class GenerateRequest(Latents):
  """Images to generate and the strokes to apply to every one of them."""

  interventions: list[Intervention] = pydantic.Field(
      [], description="Composited in order, later on top; at most `max_interventions`.")


class FeaturesRequest(Latents):
  """Images whose unit activations to measure, and where."""

  mask: str | None = pydantic.Field(None, description="As in an intervention; none = all.")
  layers: list[str] | None = pydantic.Field(None, description="Default: every dissected layer.")


# ----------------------------------------------------------------------------------- responses

class GenerateResponse(pydantic.BaseModel):
  images: list[str] = pydantic.Field(description="PNG data URLs, one per seed or z.")


class ErrorResponse(pydantic.BaseModel):
  """A refused request."""

  detail: str = pydantic.Field(description="The bad value and what would be valid.")


class InfoResponse(pydantic.BaseModel):
  model: str = pydantic.Field(description="The generator (a name of `jaxdissect.zoo`).")
  segmenter: str = pydantic.Field(description="The segmenter the dissection labelled with.")
  image_size: list[int] = pydantic.Field(description="[H, W] of images and masks.")
  zdim: int = pydantic.Field(description="Numbers per latent z.")
  max_interventions: int = pydantic.Field(description="Most interventions per request.")
  max_batch: int = pydantic.Field(description="Most images per request.")
  default_layer: str = pydantic.Field(description="The layer the page starts on.")
  intensities: list[int] = pydantic.Field(description="Units per stroke: low, medium, high.")
  insert_scale: float = pydantic.Field(
      description="'Add' sets units to their threshold times this.")


class LayerInfo(pydantic.BaseModel):
  layer: str
  shape: list[int] = pydantic.Field(description="[h, w, units] of the featuremap.")
  interpretable: int = pydantic.Field(description="Units whose label passes the IoU cut.")
  concept_counts: dict[str, int] = pydantic.Field(
      description="Interpretable units per concept.")


class LayersResponse(pydantic.BaseModel):
  layers: list[LayerInfo]


class UnitInfo(pydantic.BaseModel):
  unit: int
  label: str = pydantic.Field(description="The concept of highest IoU.")
  category: str = pydantic.Field(description="The label's category (object, material, ...).")
  iou: float = pydantic.Field(description="IoU of the unit with its label.")
  threshold: float = pydantic.Field(description="Activation level of the dissection's cut.")
  interpretable: bool = pydantic.Field(description="Whether the IoU passes the cut.")
  strip: str | None = pydantic.Field(description="URL of its top-image strip, if any.")


class UnitsResponse(pydantic.BaseModel):
  layer: str
  units: list[UnitInfo] = pydantic.Field(description="Every unit, by index.")


class ConceptInfo(pydantic.BaseModel):
  name: str
  category: str
  units: int = pydantic.Field(description="Units of the layer labelled with it.")
  interpretable: int = pydantic.Field(description="Of those, units that pass the IoU cut.")
  rankings: list[Literal["iou", "alpha"]] = pydantic.Field(
      description="Rankings available: by IoU, and by learned alpha (units-<concept>.json).")


class ConceptsResponse(pydantic.BaseModel):
  layer: str
  concepts: list[ConceptInfo] = pydantic.Field(description="Learned and most labelled first.")


class Ranking(pydantic.BaseModel):
  name: str = pydantic.Field(description="'<concept>-<metric>'.")
  concept: str
  metric: Literal["iou", "alpha"]
  units: list[int] = pydantic.Field(description="Every unit, best first.")
  scores: list[float] = pydantic.Field(description="The metric of each of `units`.")


class RankingsResponse(pydantic.BaseModel):
  layer: str
  rankings: list[Ranking]


class LevelsResponse(pydantic.BaseModel):
  layer: str
  quantile: float | None = pydantic.Field(
      description="The activation quantile of the levels; null for IQR thresholds.")
  levels: list[float] = pydantic.Field(description="Each unit's dissection threshold.")


class LayerFeatures(pydantic.BaseModel):
  mean: list[list[float]] = pydantic.Field(
      description="[images][units]: mean activation, weighted by the mask mean-pooled to the "
      "layer's grid.")
  max: list[list[float]] = pydantic.Field(
      description="[images][units]: max activation where the max-pooled mask is set.")


class FeaturesResponse(pydantic.BaseModel):
  layers: dict[str, LayerFeatures] = pydantic.Field(description="Per requested layer.")


LayerQuery = Annotated[str, fastapi.Query(description="A dissected layer (see /api/layers).")]
ConceptQuery = Annotated[str | None, fastapi.Query(
    description="A concept (see /api/concepts); none = every concept.")]
TABLE_ERRORS = {400: {"model": ErrorResponse, "description": "An unknown layer or concept."},
                422: {"model": ErrorResponse, "description": "A missing or mistyped parameter."}}
COMPUTE_ERRORS = {
    400: {"model": ErrorResponse,
          "description": "A bad value: layer, unit, alpha, mask, latent or image count."},
    413: {"model": ErrorResponse, "description": "The body exceeds the server's size limit."},
    422: {"model": ErrorResponse,
          "description": "Malformed JSON, a mistyped value or an unknown field."}}
