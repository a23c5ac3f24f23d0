"""End of fit: calibrate, quantize, compress and write the artifact (rank 0), read it back from disk on every rank,
score it, and report (parameter-golf.md §3.4). The reported score is the artifact's, never the in-memory model's."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from golf.callbacks.budget import find_budget
from golf.callbacks.constraints import cap_of, find_constraints
from golf.errors import ConstraintViolation, GolfError
from golf.eval import EvalConfig, TTTConfig, evaluate
from golf.evaluate import autocast_for
from golf.export import export_backbone, load_backbone
from golf.quant import HessianCollector, QuantScheme


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _barrier() -> None:
    if _distributed():
        dist.barrier()


class Finalize(Callback):
    def __init__(
        self,
        quant: QuantScheme = QuantScheme(),  # noqa: B008  (never mutated)
        compressor: str = "lzma",
        byte_shuffle: bool = False,
        calibration: str = "none",
        calibration_batches: int = 4,
        calibration_seqs: int = 32,
        calibration_seq_len: int = 512,
        calibration_temperature: float = 0.8,
        artifact_name: str = "model.golf",
        output_dir: str | None = None,
        compressibility_report: bool = True,
        eval: EvalConfig = EvalConfig(),  # noqa: A002,B008  (the YAML key; never mutated)
    ) -> None:
        """
        Args:
            quant: The quantization scheme (method int8 | int6 | intN | gptq | none, bits, clip, protect patterns).
            compressor: zlib | lzma | brotli | zstd | best (smallest of all four, each size reported).
            byte_shuffle: Byte-shuffle multi-byte tensors before compressing.
            calibration: GPTQ Hessians from: none | train (training batches, inside the budget's reserve) |
                self_generated (sequences the model samples after training; legal outside the budget).
            calibration_batches: Training batches for calibration=train.
            calibration_seqs: Sequences for calibration=self_generated.
            calibration_seq_len: Their length.
            calibration_temperature: Their sampling temperature.
            artifact_name: File name of the artifact in the run directory.
            output_dir: Where artifact and report.json go (default: the logger's run directory).
            compressibility_report: Add the per-tensor/per-role compressed-bytes table (and a PNG) to the report.
            eval: How the artifact is scored (mode windows | sliding | doc_isolated | stateful, stride, overlap,
                batch_tokens, score-first TTT, time budget; docs/eval.md). The pre-quantization score uses the same
                mode without TTT, so quant_gap_bpb measures quantization alone.
        """
        if calibration not in ("none", "train", "self_generated"):
            raise GolfError(f"Finalize.calibration={calibration!r}: use none, train or self_generated")
        self.quant = quant
        self.compressor = compressor
        self.byte_shuffle = byte_shuffle
        self.calibration = calibration
        self.calibration_batches = calibration_batches
        self.calibration_seqs = calibration_seqs
        self.calibration_seq_len = calibration_seq_len
        self.calibration_temperature = calibration_temperature
        self.artifact_name = artifact_name
        self.output_dir = output_dir
        self.compressibility_report = compressibility_report
        eval.check()
        self.eval = eval
        self.report: dict[str, Any] | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if getattr(trainer, "datamodule", None) is not None and hasattr(trainer.datamodule, "seq_len"):
            self.eval.check(trainer.datamodule.seq_len)  # a bad stride / lora chunk fails before training, not after
        # Resolved once on every rank (trainer.log_dir is a collective) and checked before training, not after it.
        self.out_dir = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                probe = self.out_dir / ".golf_write_probe"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise GolfError(
                    f"{self.out_dir}: output directory is not writable ({e.strerror}); "
                    f"set Finalize.output_dir or trainer.logger.save_dir to a writable folder"
                ) from None

    # -- calibration -----------------------------------------------------------------------------------------------
    def collect_hessians(self, trainer, pl_module) -> tuple[dict[str, torch.Tensor] | None, float]:
        if self.calibration == "none" or self.quant.method != "gptq":
            return None, 0.0
        t0 = time.perf_counter()
        model, device = pl_module.model, pl_module.device
        with HessianCollector(model) as hc:
            handle = model.final_norm.register_forward_hook(lambda m, i, out: hc.add("tok_emb.weight", out))
            try:
                with torch.no_grad(), autocast_for(device):
                    if self.calibration == "train":
                        windows = trainer.datamodule.train_dataloader().dataset
                        for i in range(self.calibration_batches):
                            batch = windows.batch(trainer.global_step + i).to(device)
                            for micro in batch:
                                model(micro[:, :-1])
                    else:
                        from golf.generate import sample

                        seqs = sample(model, self.calibration_seqs, self.calibration_seq_len,
                                      self.calibration_temperature, seed=1234 + trainer.global_rank, device=device)
                        model(seqs)
            finally:
                handle.remove()
        return hc.hessians, time.perf_counter() - t0

    # -- the end of fit --------------------------------------------------------------------------------------------
    def on_train_end(self, trainer, pl_module) -> None:
        t_start = time.perf_counter()
        dm = trainer.datamodule
        model, device = pl_module.model, pl_module.device
        out_dir = self.out_dir
        artifact_path = out_dir / self.artifact_name
        budget = find_budget(trainer)

        val, pre_cfg = dm.load_val(), replace(self.eval, ttt=TTTConfig())
        rank_zero_info(f"golf: scoring the trained model (pre-quantization, {self.eval.mode}) on the full val split")
        pre = evaluate(model, val, dm.seq_len, dm.byte_luts, device, pre_cfg, batch_tokens=dm.val_forward_tokens)
        hessians, calib_seconds = self.collect_hessians(trainer, pl_module)
        info = qs = None
        if trainer.is_global_zero:
            t_q = time.perf_counter()
            info, qs = export_backbone(
                model, artifact_path, self.quant, compressor=self.compressor, byte_shuffle=self.byte_shuffle,
                cap=cap_of(trainer), hessians=hessians,
                metadata={"tokenizer_sha256": dm.tokenizer_sha256, "seq_len": dm.seq_len,
                          "global_step": trainer.global_step},
            )
            export_seconds = time.perf_counter() - t_q
        _barrier()
        # Every rank reads the artifact back from disk and scores it: this number is the score.
        roundtrip, header = load_backbone(artifact_path, device)
        rank_zero_info(f"golf: scoring the artifact ({self.eval.mode}, ttt {self.eval.ttt.kind}) on the full val split")
        post = evaluate(roundtrip, val, dm.seq_len, dm.byte_luts, device, self.eval, batch_tokens=dm.val_forward_tokens)
        if not trainer.is_global_zero:
            self._check_constraints(trainer, None)
            return

        steps = trainer.global_step
        tokens_seen = steps * dm.train_batch_tokens
        elapsed = budget.elapsed() if budget else None
        report: dict[str, Any] = {
            "pre_quant": pre.as_dict(),
            "post_quant": post.as_dict(),
            "quant_gap_bpb": post.val_bpb - pre.val_bpb,
            "artifact": {**vars(info), "code_sha256": header["metadata"].get("code_sha256")},
            "quant": self.quant.to_dict(),
            "eval": asdict(self.eval),
            "training": {
                "steps": steps,
                "tokens_seen": tokens_seen,
                "epochs": tokens_seen / max(dm.train_tokens_total, 1),
                "train_tokens_in_corpus": dm.train_tokens_total,
                "train_seconds": elapsed,
                "tokens_per_second": tokens_seen / elapsed if elapsed else None,
                "stop_reason": budget.stop_reason if budget else None,
                "late_qat_from_step": next(
                    (c.enabled_at_step for c in trainer.callbacks if type(c).__name__ == "LateQAT"), None
                ),
                "calibration": self.calibration,
                "calibration_seconds": calib_seconds,
                "world_size": trainer.world_size,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            },
            "parameters": pl_module.num_parameters(),
            "layers": pl_module.backbone_config.layers,
            "export_seconds": export_seconds,
            "finalize_seconds": time.perf_counter() - t_start,
        }
        if self.calibration == "train" and budget and budget.budget_seconds:
            report["training"]["budget_used_with_calibration"] = elapsed + calib_seconds
        if self.compressibility_report:
            report["compressibility"] = self._compressibility(qs, out_dir)
        self.report = report
        self._check_constraints(trainer, report)

    def _compressibility(self, qs, out_dir: Path) -> dict[str, Any]:
        from golf.report_compress import plot_roles, role_summary, tensor_report

        rows = tensor_report(qs)
        png = out_dir / "compressibility_by_role.png"
        try:
            plot_roles(rows, png)
        except ImportError:  # matplotlib is optional on GPU images
            png = None
        return {"by_role": role_summary(rows), "tensors": rows, "plot": str(png) if png else None}

    def _check_constraints(self, trainer, report: dict[str, Any] | None) -> None:
        # Rank 0 decides (it has the report) and broadcasts, so every rank raises or none does.
        results = [c.evaluate_end(report) for c in find_constraints(trainer)] if report is not None else None
        if _distributed():
            box = [results]
            dist.broadcast_object_list(box, src=0)
            results = box[0]
        failed = [r for r in results or [] if not r["ok"]]
        if report is not None:
            report["constraints"] = results
            report["passed"] = not failed
            path = self.out_dir / "report.json"
            path.write_text(json.dumps(report, indent=2, default=str) + "\n")
            rank_zero_info(format_report(report, path))
        if failed:
            raise ConstraintViolation("; ".join(f"{r['name']}: {r['reason']}" for r in failed))


def format_report(report: dict[str, Any], path: os.PathLike | str) -> str:
    pre, post, art, tr = report["pre_quant"], report["post_quant"], report["artifact"], report["training"]
    lines = [
        "=" * 72,
        f"golf report ({path})",
        f"  model        {report['parameters']:,} parameters, layers {report['layers']}",
        f"  training     {tr['steps']} steps, {tr['tokens_seen']:,} tokens ({tr['epochs']:.2f} epochs of the train split)"
        + (f", {tr['train_seconds']:.1f}s, {tr['tokens_per_second']:,.0f} tok/s" if tr["train_seconds"] else ""),
        f"  pre-quant    val_loss {pre['val_loss']:.4f}  val_bpb {pre['val_bpb']:.4f}",
        f"  post-quant   val_loss {post['val_loss']:.4f}  val_bpb {post['val_bpb']:.8f}  (from {art['path']}, "
        f"{post['tokens']:,} tokens, {post['seconds']:.1f}s, eval {post.get('mode', 'windows')}"
        + (f" + ttt {post['ttt']} {post['ttt_steps']} steps {post['ttt_seconds']:.1f}s"
           if post.get("ttt", "none") != "none" else "")
        + ")",
        f"  quant gap    {report['quant_gap_bpb']:+.4f} bpb",
        f"  bytes        model {art['model_bytes']:,} + code {art['code_bytes_compressed']:,} "
        f"(raw {art['code_bytes_raw']:,}) = {art['total_bytes']:,} / cap {art['cap']:,} "
        f"-> {'fits' if art['fits'] else 'OVER THE CAP'} ({art['compressor']})",
    ]
    for c in report.get("constraints") or []:
        lines.append(f"  constraint   {c['name']}: {'ok' if c['ok'] else 'FAILED: ' + str(c['reason'])}")
    lines.append("=" * 72)
    return "\n".join(lines)
