"""Your own model (examples/my_cnn.py) on your own folder of images: DATA/train/<class>/* and DATA/test/<class>/*.

python examples/make_image_folder.py runs/fashion-folder          # real Fashion-MNIST images as PNG files
python -m fluxdigits.run examples/folder_experiment.py --config.dataset.data_dir=runs/fashion-folder
"""

import pathlib

from fluxdigits.config import defaults


def get_config():
  config = defaults()
  config.dataset.name = "folder"
  config.dataset.data_dir = "runs/fashion-folder"
  config.dataset.standardize = True  # each channel by the training images' own mean and std
  # FILE.py:CLASS, here beside this file; package.module:CLASS names an installed module.
  config.model.name = f"{pathlib.Path(__file__).with_name('my_cnn.py')}:SmallCNN"
  config.model.kwargs.features = 16
  config.model.dropout_rate = 0.25
  config.augment.name = "digits"  # small random shifts and rotations
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 2e-3
  config.batch_size = 64
  config.num_epochs = 4
  return config
