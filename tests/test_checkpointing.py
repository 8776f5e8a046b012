"""Checkpoint architecture checks (the restore paths under faults: test_faults.py)."""
import jax
import pytest

from wsss_jax import backbone, checkpointing


def test_check_params_names_the_mismatch():
  small = backbone.init_params(jax.random.key(0),
                               backbone.BackboneConfig(num_classes=3, width=0.0625))
  other = backbone.init_params(jax.random.key(0),
                               backbone.BackboneConfig(num_classes=3, width=0.125))
  checkpointing.check_params(small, small, 'ckpt')
  with pytest.raises(ValueError, match=r'ckpt: .*conv1_1 has shape'):
    checkpointing.check_params(small, other, 'ckpt')
