"""Checkpoints: atomic writes, ``weights_only`` loads, and state dicts free of wrapper prefixes; a run folder's
checkpoint files in ``layout``, writing in ``save``, reading in ``load``. Everything imports from here; a test that
patches a function patches it where it is defined (``gptlab.checkpoint.load.load_dcp``) to reach its callers.

Two formats, one meaning (model, optimizer, arch, config, iteration, best val loss, RNG, tokenizer):

- single file ``ckpt.pt`` (single process, DDP, ZeRO-1 after ``consolidate_state_dict``): a full
  state dict written by rank 0. A crash during a save leaves the previous checkpoint intact: we
  write to a temporary file in the same directory, fsync it, and ``os.replace`` it over the old one.
- ``torch.distributed.checkpoint`` directory (FSDP): ``ckpt-ITER.dcp/`` where every rank writes
  its own shards (no gather to rank 0), plus ``meta.pt`` with everything but the tensors. It is
  written under a temporary name and renamed when complete; ``ckpt.dcp`` is a symlink to the
  latest, replaced atomically. DCP reshards on load, so any world size can resume it.

``latest_checkpoint(out_dir)`` picks the one at the later iteration; ``load_checkpoint`` turns either into
the single-file dict (a DCP directory is read without a process group), which is how a checkpoint
resumes under another mode and how ``gptlab export`` works. With ``keep_checkpoints=K`` the last K
are kept (``ckpt-ITER.pt`` hard links, or ``ckpt-ITER.dcp`` directories).
"""

from __future__ import annotations

from gptlab.checkpoint.layout import (
    CHECKPOINT_NAME,
    DCP_LINK,
    DCP_META,
    checkpoint_history,
    damaged_dcp,
    dcp_on_disk,
    hf_folder_model_type,
    interrupted_save,
    is_dcp_dir,
    is_run_checkpoint,
    kept_checkpoints,
    latest_checkpoint,
    listed_runs,
    no_checkpoint_error,
    prune_history,
    remove_checkpoints,
    remove_entry,
    remove_save_leftovers,
    rollback_hint,
    runs_inside,
    saved_summary,
    stopped_before_training,
    weights_path,
)
from gptlab.checkpoint.load import (
    FILE_SYSTEM_REFUSALS,
    READ_ATTEMPTS,
    check_dcp_metadata,
    check_sizes_fit_weights,
    check_zip_crc,
    cut_short,
    dcp_errors,
    foreign_file,
    layer_count,
    load_checkpoint,
    load_checkpoint_meta,
    load_dcp,
    load_dcp_full,
    load_dcp_model,
    not_a_checkpoint,
    optimizer_state_by_name,
    pickled,
    read_checkpoint_record,
    read_saved_settings,
    record_problem,
    refused_as_unsafe,
    state_errors,
    torch_load_checked,
    unsafe_checkpoint_error,
    weights_disagree,
)
from gptlab.checkpoint.save import (
    FORMAT,
    WRAPPER_PREFIXES,
    atomic_save,
    check_links_allowed,
    clean_state_dict,
    first_dcp_failure,
    save_dcp,
    save_single_file,
    software_versions,
)
from gptlab.errors import CheckpointError  # (what every reader here raises)

__all__ = [
    "CHECKPOINT_NAME",
    "DCP_LINK",
    "DCP_META",
    "FILE_SYSTEM_REFUSALS",
    "FORMAT",
    "READ_ATTEMPTS",
    "WRAPPER_PREFIXES",
    "CheckpointError",
    "atomic_save",
    "check_dcp_metadata",
    "check_links_allowed",
    "check_sizes_fit_weights",
    "check_zip_crc",
    "checkpoint_history",
    "clean_state_dict",
    "cut_short",
    "damaged_dcp",
    "dcp_errors",
    "dcp_on_disk",
    "first_dcp_failure",
    "foreign_file",
    "hf_folder_model_type",
    "interrupted_save",
    "is_dcp_dir",
    "is_run_checkpoint",
    "kept_checkpoints",
    "latest_checkpoint",
    "layer_count",
    "listed_runs",
    "load_checkpoint",
    "load_checkpoint_meta",
    "load_dcp",
    "load_dcp_full",
    "load_dcp_model",
    "no_checkpoint_error",
    "not_a_checkpoint",
    "optimizer_state_by_name",
    "pickled",
    "prune_history",
    "read_checkpoint_record",
    "read_saved_settings",
    "record_problem",
    "refused_as_unsafe",
    "remove_checkpoints",
    "remove_entry",
    "remove_save_leftovers",
    "rollback_hint",
    "runs_inside",
    "save_dcp",
    "save_single_file",
    "saved_summary",
    "software_versions",
    "state_errors",
    "stopped_before_training",
    "torch_load_checked",
    "unsafe_checkpoint_error",
    "weights_disagree",
    "weights_path",
]
