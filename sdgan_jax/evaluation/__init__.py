"""The paper's evaluation (§4.2-4.3, docs/evaluation.md): detection, identification,
re-identification, FID/KID, SSIM and PSNR for the baselines and trained models;
``tools/eval.py`` is its CLI."""
