"""``spatialoc train {pointnet,coarse,fine}``: argument wiring; the work is in
spatialoc_ros.training."""
from __future__ import annotations

import json

ABLATIONS = ("beose", "ga", "fae")


def add_train_command(commands) -> None:
    train = commands.add_parser("train", help="train a model on a KITTI360Pose folder",
                                description="Train the object classifier, the coarse stage or the "
                                            "fine stage.")
    sub = train.add_subparsers(dest="train_command", metavar="{pointnet,coarse,fine}")
    sub.required = True
    _add_pointnet(sub)
    _add_coarse(sub)
    _add_fine(sub)


def _common(p) -> None:
    p.add_argument("--data", required=True, metavar="DIR",
                   help="KITTI360Pose folder (train and val splits)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (checkpoints, resumable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_pointnet(sub) -> None:
    p = sub.add_parser("pointnet", help="pre-train the PointNet++ object classifier",
                       description="Train PointNet++ to classify the train split's objects; the "
                                   "best epoch on validation is written to "
                                   "OUT/pointnet.safetensors + .json and measured on the test "
                                   "split. Run it again with the same OUT to resume "
                                   "(OUT/pointnet_last.pt). Under torchrun it trains with "
                                   "DistributedDataParallel.")
    _common(p)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-objects", type=int, default=None, metavar="N",
                   help="train on a new random subset of N objects each epoch (default: all)")
    p.add_argument("--max-eval-objects", type=int, default=None, metavar="N",
                   help="measure val and test accuracy on fixed random subsets of N objects "
                        "(default: all)")
    p.set_defaults(handler=_run_pointnet)


def _run_pointnet(args) -> int:
    from ..training.pointnet_trainer import train_pointnet

    metrics = train_pointnet(args.data, args.out, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed, device=args.device,
                             max_objects=args.max_objects, max_eval_objects=args.max_eval_objects,
                             progress=not args.quiet)
    print(json.dumps(metrics))
    return 0


def _add_coarse(sub) -> None:
    p = sub.add_parser("coarse", help="train the coarse stage (text-to-submap retrieval)",
                       description="Train SpatiaLoc's coarse stage; the best epoch on validation "
                                   "is written to OUT/coarse.safetensors + OUT/coarse.json. Run "
                                   "it again with the same OUT to resume. Under torchrun it "
                                   "trains with DistributedDataParallel.")
    _common(p)
    p.add_argument("--epochs", type=int, default=20,
                   help="default: the paper's 20 (the reference README: 32 with --lr 1e-4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4,
                   help="Adam learning rate, halved every 5 epochs (default: the paper's 5e-4)")
    p.add_argument("--pointnet", default="models/pointnet", metavar="STEM",
                   help="frozen PointNet++ checkpoint (STEM.safetensors + STEM.json)")
    p.add_argument("--text-encoder", default="minilm",
                   help="'minilm' (embedded), a local Hugging Face folder, or a cached hub name")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="cache of frozen inputs (default DATA/.spatialoc_cache)")
    p.add_argument("--dim", type=int, default=256, help="embedding width D")
    p.add_argument("--losses", default="is,io,global",
                   help="loss terms to train, comma-separated subset of is,io,global (Table 4)")
    p.add_argument("--global-terms", default="1,1,1",
                   help="weights of the (Q,P), (Q,Q), (P,P) terms of L_Global")
    p.add_argument("--ablate", action="append", choices=ABLATIONS, default=[],
                   help="remove a component (Table 5): beose, ga (max-pooling instead) or fae; "
                        "repeatable")
    p.add_argument("--global-only", action="store_true",
                   help="the SpatiaLoc (Global) variant: global descriptors, loss and score only")
    p.add_argument("--max-train-queries", type=int, default=0,
                   help="train on a random subset (0 = all)")
    p.add_argument("--max-val-queries", type=int, default=0,
                   help="validate on a random subset (0 = all)")
    p.add_argument("--language-aug", type=float, default=0.5, metavar="P",
                   help="share of training queries said again in other words by the paraphrase "
                        "generator and read back by the language front end (0 = templates only)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from this weights folder's STAGE.safetensors (fine-tuning)")
    p.set_defaults(handler=_run_coarse)


def _run_coarse(args) -> int:
    from ..errors import SpatialocError
    from ..networks.coarse import CoarseConfig
    from ..training.coarse_trainer import CoarseTrainConfig, train_coarse

    losses = tuple(t.strip() for t in args.losses.split(",") if t.strip())
    try:
        terms = tuple(float(w) for w in args.global_terms.split(","))
    except ValueError:
        raise SpatialocError(f"--global-terms must be three numbers, "
                             f"got {args.global_terms!r}") from None
    if len(terms) != 3:
        raise SpatialocError(f"--global-terms must be three numbers, got {args.global_terms!r}")
    if args.global_only:
        losses = ("global",)
    model = CoarseConfig(d=args.dim, ablate_beose="beose" in args.ablate,
                         ga_mode="maxpool" if "ga" in args.ablate else "gaussian",
                         ablate_fae="fae" in args.ablate, global_only=args.global_only)
    cfg = CoarseTrainConfig(data=args.data, out=args.out, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            device=args.device, text_encoder=args.text_encoder,
                            pointnet=args.pointnet, cache=args.cache, losses=losses,
                            global_terms=terms, max_train_queries=args.max_train_queries,
                            max_val_queries=args.max_val_queries, model=model,
                            language_aug=args.language_aug, init=args.init)
    state = train_coarse(cfg, progress=not args.quiet)
    print(json.dumps({"best_val_recall_at_" + cfg.select: state["best"],
                      "epochs": state["epoch"], "weights": f"{args.out}/coarse.safetensors"}))
    return 0


def _add_fine(sub) -> None:
    p = sub.add_parser("fine", help="train the fine stage (position inside a submap, UGFL)",
                       description="Train SpatiaLoc's fine stage (UGFL) on the training queries "
                                   "and their ground-truth cells; the epoch with the lowest mean "
                                   "validation error is written to OUT/fine.safetensors + "
                                   "OUT/fine.json. Run it again with the same OUT to resume. "
                                   "Under torchrun it trains with DistributedDataParallel.")
    _common(p)
    p.add_argument("--epochs", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-epochs", type=int, default=2,
                   help="epochs at lr 1e-5 before --lr")
    p.add_argument("--pmc-prob", type=float, default=0.5,
                   help="probability of training on an eligible neighbouring cell instead "
                        "(PMC; 0 = off)")
    p.add_argument("--no-precision-head", action="store_true",
                   help="the 'w/o probability' ablation: no lambda branch, loss 5 x MSE")
    p.add_argument("--pointnet", default="models/pointnet", metavar="STEM",
                   help="frozen PointNet++ checkpoint (STEM.safetensors + STEM.json)")
    p.add_argument("--text-encoder", default="minilm",
                   help="'minilm' (embedded), a local Hugging Face folder, or a cached hub name")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="cache of frozen inputs (default DATA/.spatialoc_cache)")
    p.add_argument("--dim", type=int, default=128, help="fusion width D (a multiple of 16)")
    p.add_argument("--max-train-queries", type=int, default=0,
                   help="train on a random subset (0 = all)")
    p.add_argument("--max-val-queries", type=int, default=0,
                   help="validate on a random subset (0 = all)")
    p.add_argument("--language-aug", type=float, default=0.5, metavar="P",
                   help="share of training queries said again in other words by the paraphrase "
                        "generator and read back by the language front end (0 = templates only)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from this weights folder's STAGE.safetensors (fine-tuning)")
    p.set_defaults(handler=_run_fine)


def _run_fine(args) -> int:
    from ..networks.ugfl import FineConfig
    from ..training.fine_trainer import FineTrainConfig, train_fine

    model = FineConfig(d=args.dim, precision_head=not args.no_precision_head)
    cfg = FineTrainConfig(data=args.data, out=args.out, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
                          pmc_prob=args.pmc_prob, seed=args.seed, device=args.device,
                          text_encoder=args.text_encoder, pointnet=args.pointnet,
                          cache=args.cache, max_train_queries=args.max_train_queries,
                          max_val_queries=args.max_val_queries, model=model,
                          language_aug=args.language_aug, init=args.init)
    state = train_fine(cfg, progress=not args.quiet)
    print(json.dumps({"best_val_mean_error_m": state["best"], "epochs": state["epoch"],
                      "weights": f"{args.out}/fine.safetensors"}))
    return 0
