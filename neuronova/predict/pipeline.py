"""``predict.mri_segmentation``: the predict API's segmentation task, run as a job by any worker.

The task's input is the upload the node checked (``<data_dir>/predict/<task_id>/input/``) and its output the
files of :func:`neuronova.predict.segmentation.run_segmentation` in ``result/``; the result body (volumes, key
slices, file names) becomes the job's summary, which ``task_status`` shows. Nothing goes to the PACS: the
client asked, the client downloads.

Where the files are: a worker on the node's machine, or on a shared volume, reads and writes the node's task
directory. A worker on another machine (``neuronova worker --node-url``) fetches the input files from the node
into its own data directory, runs there, and puts each result file back to the node, every request fenced by
the job's claim (:mod:`neuronova.api.task_files`), so a worker that lost the job cannot overwrite the files of
the run that replaced it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from neuronova.errors import InvalidRequest
from neuronova.models.segmentation import SegmentationModel
from neuronova.pipelines.registry import PipelineContext, PipelineResult
from neuronova.pipelines.steps import ModelPipeline, model_for
from neuronova.predict import segmentation
from neuronova.predict.tasks import INPUT_DIR, PIPELINES, RESULT_DIR, TASK_ID, decode_params


class PredictSegmentation(ModelPipeline):
    name = PIPELINES["mri_segmentation"]
    model_id = "mri_segmentation"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        job = context.job
        task_id = job.series_uid
        if not TASK_ID.fullmatch(task_id):
            raise InvalidRequest(f"job {job.job_id} does not name a predict task")
        try:
            params = decode_params(job.input_fingerprint)
            description: dict[str, Any] = params["input"]
        except (ValueError, KeyError) as exc:
            raise InvalidRequest(f"task {task_id}: unreadable parameters ({exc})") from None
        task_dir = Path(context.settings.data_dir) / "predict" / task_id
        remote = _remote(context)
        try:
            if remote is not None:
                remote.fetch_task_input(job, task_dir / INPUT_DIR, description["files"])
            context.progress(5)
            model = model_for(context, self.model_id, SegmentationModel)
            self.require_version(model)
            settings = context.settings
            body = segmentation.run_segmentation(
                task_dir=task_dir, description=description, model=model, explain=bool(params.get("xai")),
                xai_budget_s=settings.xai_time_budget_seconds, series_number_base=settings.series_number_base,
                progress=context.progress)
            if remote is not None:
                remote.put_task_results(job, task_dir / RESULT_DIR, body["files"])
        finally:
            if remote is not None:
                remote.close()
        # The input is not needed any more; on a remote worker nothing is (the node keeps the results).
        shutil.rmtree(task_dir if remote is not None else task_dir / INPUT_DIR, ignore_errors=True)
        return PipelineResult(datasets=[], summary=body)


def _remote(context: PipelineContext) -> Any:
    """The node seen from a worker on another machine (None on the node's machine or its shared volume)."""
    if not context.settings.node_url:
        return None
    from neuronova.jobs.remote import RemoteNode

    return RemoteNode(context.settings, store=context.store)
