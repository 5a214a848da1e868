"""Captioning through OpenAI-compatible servers (e.g. one vLLM per GPU node) instead of in the step.

The base model is whatever `served_model` the servers at `base_urls` serve. The fine-tuned
checkpoint is captioned remotely too when `finetuned_base_urls` serve it (export the checkpoint
folder to vLLM); otherwise it is captioned by the local engine, as with `CaptionerResource`.
A remotely served checkpoint is identified by its weights hash, so its captions and scores
still name the checkpoint they came from.

Clips go as one vLLM video each by default (`video_transport`), at the recipe's frames and timing;
`family` must name the served model's family, and `server_max_frames` the frame count the servers
were started for, so an over-long clip is reported with the flag to raise instead of being sent.
"""

from __future__ import annotations

from pydantic import Field

from avdag.core.captioning.model_family import ModelFamily, family_by_name
from avdag.core.captioning.remote import OpenAIVlmCaptioner
from avdag.core.common.model_identity import model_fingerprint
from avdag.resources.captioner import CaptionerResource
from avdag.resources.storage import StateStoreResource


class OpenAIVlmCaptionerResource(CaptionerResource):
    """`CaptionerResource` whose captions come from OpenAI-compatible VLM servers."""

    base_urls: list[str] = Field(description="Servers serving the base model, e.g. ['http://gpu-node-1:8000/v1'].")
    served_model: str | None = Field(default=None, description="Model name the servers expect; default `model`.")
    api_key: str = Field(default="EMPTY", description="Use dg.EnvVar('AVDAG_VLM_API_KEY') for a real key.")
    model_revision: str = Field(
        default="", description="Bump when the served weights change: it is part of each caption's identity."
    )
    finetuned_base_urls: list[str] = Field(
        default_factory=list, description="Servers serving the sft_checkpoint export; empty = caption it locally."
    )
    finetuned_served_model: str | None = Field(default=None, description="Model name of the served checkpoint.")
    max_in_flight: int = Field(default=8, description="Requests in flight per server.")
    timeout_s: float = 300.0
    max_retries: int = Field(default=2, description="Retries on 429/5xx/timeouts, honouring Retry-After.")
    video_transport: str = Field(
        default="video",
        description=(
            "'video' (vLLM): one video per clip, temporal patches and time positions, as the recipe trains. "
            "'frames' (any OpenAI-compatible server): one image per frame, about 2x the visual tokens and no "
            "temporal positions, so not what a fine-tuned model saw."
        ),
    )
    family: str = Field(
        default="qwen2_5_vl",
        description="The served model's family: 'qwen2_5_vl' (Cosmos-Reason1) or 'qwen3_vl' (Cosmos-Reason2).",
    )
    server_max_frames: int | None = Field(
        default=None,
        description=(
            "Frames per clip the servers were started for (--limit-mm-per-prompt: the video's num_frames, or the "
            "image count for 'frames'); a longer clip fails naming the value to raise. None: only the server checks."
        ),
    )

    def model_family(self) -> ModelFamily:
        """The served model's family, as configured: its config.json is on the servers, not here."""
        return family_by_name(self.family)

    def settings_family(self) -> ModelFamily:
        return self.model_family()

    def captioner(self, model: str, state: StateStoreResource):
        if model == self.base_model(state):
            return self._remote(self.base_urls, self.served_model or self.model, self.model_revision)
        if self.finetuned_base_urls:
            if not self.finetuned_served_model:
                raise ValueError("finetuned_base_urls is set but finetuned_served_model is not")
            revision = model_fingerprint(state.local_model(model))
            return self._remote(self.finetuned_base_urls, self.finetuned_served_model, revision)
        return super().captioner(model, state)

    def _remote(self, base_urls: list[str], served: str, revision: str) -> OpenAIVlmCaptioner:
        return OpenAIVlmCaptioner(
            base_urls,
            served,
            api_key=self.api_key,
            settings=self.settings(),
            max_in_flight=self.max_in_flight,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            model_revision=revision,
            video_transport=self.video_transport,  # type: ignore[arg-type]
            family=self.family,
            server_max_frames=self.server_max_frames,
        )
