"""``unireg train``: a UniReg model trained on one dataset (YAML config)."""

from __future__ import annotations


def add_parser(verbs) -> None:
    p = verbs.add_parser("train", help="train a UniReg model on one dataset (YAML config)")
    p.add_argument("--config", required=True, help="training YAML (see config/train_default.yaml)")
    p.add_argument("--restart", action="store_true", help="ignore <output>/last.pt and start from step 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.csv)")
    p.add_argument(
        "--finish",
        action="store_true",
        help="train no further: ship a stopped run (last.pt) as model.pt with its card and learning curve",
    )
    p.set_defaults(func=run)


def run(args) -> None:
    from ..train import train

    card = train(args.config, resume=not args.restart, progress=not args.no_progress, finish=args.finish)
    if card["stopped"] == "interrupted":
        print(f"unireg train: stopped at step {card['steps']}; run the same command to resume")
        return
    val = card.get("validation", {})
    print(
        f"unireg train: {card['steps']} steps ({card['stopped'].replace('_', ' ')}), shipped step "
        f"{card['best_step']}; validation Dice {val.get('val_dice_affine', float('nan')):.3f} (affine) -> "
        f"{val.get('val_dice', float('nan')):.3f} (UniReg)"
    )
