"""A bare Hydra app whose job does nothing: the per-job overhead baseline for bench/job_overhead.py."""

import hydra


@hydra.main(config_path=None, version_base="1.3")
def noop(cfg) -> float:
    return 0.0


if __name__ == "__main__":
    noop()
