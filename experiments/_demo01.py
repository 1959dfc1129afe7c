"""What the issue-15 experiment scripts share: notebook 01's demo parameters with one run's changes."""
import yaml

from discnb.core import params, paths


def demo_params_01(output_dir, *, first_stage: str = "", ae_steps: int | None = None, cond_drop: float = 0.0,
                   snr_gamma: float = 0.0, sd_steps: int | None = None, guidance_scale: float = 1.0) -> params.Params:
    """params/demo/01_train_ldm.yaml, validated, with no ablation SDs, ``output_dir`` and the given
    first stage (``first_stage``: a trained folder to load; else ``ae_steps`` to train) and SD options."""
    base = yaml.safe_load(open(paths.REPO / "params/demo/01_train_ldm.yaml"))
    A = {**base["autoencoder"], "path": first_stage} | ({"steps": ae_steps} if ae_steps else {})
    sd = {**base["sd"], "cond_drop": cond_drop, "snr_gamma": snr_gamma} | ({"steps": sd_steps} if sd_steps else {})
    return params.validate("01_train_ldm", {**base, "output_dir": str(output_dir), "ablation_conditions": [],
                                            "autoencoder": A, "sd": sd, "guidance_scale": guidance_scale})
