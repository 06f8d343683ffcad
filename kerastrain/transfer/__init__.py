"""Transfer learning: backbones, CNN codes with a linear probe, fine-tuning.

Two ways to reuse a trained network on a new, small labelled set:

1. CNN codes: `extract_features(backbone, data)` once, then `LinearProbe`
   (a linear softmax classifier) on the codes; `LinearProbe.to_model`
   gives one exportable model.
2. Fine-tuning: `build_classifier(backbone, num_classes)`, train the new
   head with the backbone frozen (`freeze_backbone`), then `unfreeze` its
   top blocks and continue at a lower learning rate (`fine_tune` runs both
   phases; `GradualUnfreezing` and `discriminative_optimizer` are options;
   `find_head_learning_rate` runs the LR range test on the head).
   BatchNorm stays frozen and in inference mode throughout.

`backbone(name, input_shape, weights)` gives any `keras.applications` model
(raw 0..255 images in, its own preprocessing built in) or a feature extractor
saved as `.keras` (`cut_backbone(model).save(path)`), or source weights
(`weights="cifar10-source"`, shipped in the package; `available_weights()`).
"""

from kerastrain.transfer.backbones import (PreprocessInput,
                                           WeightsNotAvailableError,
                                           available_names, backbone,
                                           cut_backbone, scratch_classifier,
                                           set_batch_norm_momentum)
from kerastrain.transfer.source_weights import available_weights
from kerastrain.transfer.source_weights import read_manifest as read_weights_manifest
from kerastrain.transfer.codes import LinearProbe, check_codes, extract_features
from kerastrain.schedules import ScaledSchedule  # noqa: F401  (its home is schedules)
from kerastrain.transfer.finetune import (build_classifier, discriminative_optimizer,
                                          find_head_learning_rate, fine_tune)
from kerastrain.transfer.unfreezing import (GradualUnfreezing, block_names,
                                            freeze_backbone, unfreeze)

__all__ = ["backbone", "cut_backbone", "available_weights", "read_weights_manifest", "scratch_classifier", "set_batch_norm_momentum", "available_names", "PreprocessInput",
           "WeightsNotAvailableError", "extract_features", "LinearProbe", "check_codes",
           "build_classifier", "freeze_backbone", "unfreeze", "block_names",
           "GradualUnfreezing", "discriminative_optimizer", "ScaledSchedule",
           "find_head_learning_rate", "fine_tune"]
