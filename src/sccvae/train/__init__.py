"""Training: the Lightning plan, the paired minibatches and the split, the thread helpers.

``_training_plan`` (:class:`SCCVAETrainingPlan`, the default length of training, torch's
threads while training), ``_dataloading`` (minibatches of one perturbation paired with
control cells, the train/validation split) and ``_quiet`` (Lightning's notices).
"""

from sccvae._lazy import lazy_attributes

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "SCCVAETrainingPlan": "._training_plan",
        "PairedPerturbationSampler": "._dataloading",
        "PerturbationDataSplitter": "._dataloading",
    },
)

__all__ = ["SCCVAETrainingPlan", "PairedPerturbationSampler", "PerturbationDataSplitter"]
