"""The project file's ``execution:`` section: where stages (and global stages' tasks) run.

``engine: local`` (the default) runs every stage on the machine that materializes the asset:
in its process, or in a pool of worker processes with crash and time-limit isolation (cleaning
by default; ``local_engines`` chooses per stage). ``engine: ray`` maps the stages listed in
``stages`` over Ray Data batches on a Ray cluster; model stages run in actor pools with
(fractional) GPU requests. Storage, rejects, atomic publish and the stage report are the same
either way: the workers compute, the process that runs the asset writes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from fineharbor.core.pipeline import (
    CLEANED,
    CONCEPTS,
    DECONTAMINATED,
    DUPLICATES,
    RELEASE,
    SCORED,
    SIGNATURES,
    UNIFIED,
)
from fineharbor.core.strict import StrictModel

# the global stages' tasks: forest leaves, benchmark matching, concept assignment, shards
RAY_TASK_STAGES = (DUPLICATES, DECONTAMINATED, CONCEPTS, RELEASE)
RAY_STAGES = (UNIFIED, CLEANED, SIGNATURES, *RAY_TASK_STAGES)
# scored_samples is opt-in: on Ray it scores CLIP and the classifier; the judge stays local.
# Literal of the stage table's names: the project file's schema lists the values.
RayStage = Literal[
    UNIFIED, CLEANED, SIGNATURES, SCORED, DUPLICATES, DECONTAMINATED, CONCEPTS, RELEASE
]
# scored_samples stays in process: its judge and judgment cache live in the asset's process.
PoolStage = Literal[UNIFIED, CLEANED, SIGNATURES]
LocalEngine = Literal["in_process", "process_pool"]


class ExecutionParams(StrictModel):
    """Local or Ray execution of the per-source stages and of the global stages' tasks."""

    engine: Literal["local", "ray"] = Field(
        "local", description="local: in the asset's process; ray: on the Ray cluster at address"
    )
    address: str | None = Field(
        None,
        description="Ray cluster: 'auto' or 'host:6379' (the asset runs on a node of the cluster, "
        "e.g. a KubeRay pod) or 'ray://head:10001' (Ray Client); null starts a private Ray on "
        "this machine (or joins RAY_ADDRESS when set)",
    )
    stages: list[RayStage] = Field(
        default_factory=lambda: list(RAY_STAGES),
        description="stages that run on Ray when engine is ray; the others stay local",
    )
    batch_rows: int = Field(
        512,
        ge=1,
        le=65536,
        description="rows per Ray task (one slice of an upstream row group; row groups hold 512)",
    )
    task_rows: int = Field(
        65_536,
        ge=64,
        le=16_777_216,
        description="rows per task of a global stage (k-means forest leaves, benchmark "
        "matching, concept assignment), on Ray and locally alike, so both give the same result",
    )
    cpu_actors: int = Field(
        2, ge=1, le=4096, description="actors per CPU stage (mapping, cleaning)"
    )
    cpus_per_actor: float = Field(
        1.0, gt=0, le=256, description="CPUs per CPU-stage actor; cleaning runs that many processes"
    )
    gpu_actors: int = Field(
        1, ge=1, le=4096, description="actors per model stage (embedding, scoring)"
    )
    gpus_per_actor: float = Field(
        1.0,
        ge=0,
        le=16,
        description="GPUs per model actor: 0.5 puts two actors on one GPU; 0 runs models on CPU",
    )
    cpus_per_gpu_actor: float = Field(1.0, gt=0, le=256, description="CPUs per model actor")
    local_engines: dict[PoolStage, LocalEngine] = Field(
        default_factory=dict,
        description="per stage, where it runs when not on Ray: in_process, or process_pool "
        "(worker processes; a row that crashes or stalls one is rejected, the rest go on). "
        "Default: process_pool for cleaned_samples (untrusted image decoders), in_process for "
        "the others",
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env for the job (env_vars, pip, working_dir), passed to ray.init",
    )

    def on_ray(self, stage: str) -> bool:
        return self.engine == "ray" and stage in self.stages

    def engine_for(self, stage: str, isolated: bool = False) -> str:
        """``ray``, ``process_pool`` or ``in_process``: where ``stage`` runs (``isolated``: the
        stage's own default is the process pool)."""
        if self.on_ray(stage):
            return "ray"
        default = "process_pool" if isolated else "in_process"
        return self.local_engines.get(stage, default)  # type: ignore[call-overload]
