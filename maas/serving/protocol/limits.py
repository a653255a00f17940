"""What one request may ask of a replica: each bound is checked before the work it bounds, and a
request past one gets a 4xx naming the limit and its value (``args.limits`` in the Serve config)."""

from __future__ import annotations

from pydantic import BaseModel, Field, PositiveFloat, PositiveInt


class RequestLimits(BaseModel):
    """Bounds on a single request (both protocols)."""

    model_config = {"extra": "forbid"}

    max_request_bytes: PositiveInt = Field(default=16 * 1024 * 1024, description="Larger bodies get HTTP 413.")
    max_response_bytes: PositiveInt = Field(
        default=32 * 1024 * 1024, description="An answer that would be larger gets HTTP 413 (ask for fewer instances).")
    max_instances: PositiveInt = Field(
        default=8192, description="Instances (the batch dimension) one request may carry; more get HTTP 413.")
    max_json_depth: int = Field(default=32, ge=4, le=512, description="Deepest nesting of JSON arrays and objects; "
                                                               "deeper bodies get HTTP 400.")
    body_timeout_s: PositiveFloat = Field(
        default=30.0, description="A request body not received in full by then gets HTTP 408; the connection is "
                                  "closed.")
    offload_bytes: PositiveInt = Field(
        default=256 * 1024, description="JSON bodies (and answers) larger than this are decoded (encoded) in the "
                                "replica's codec process, so that they never hold up its event loop.")
