"""Text-to-image latent diffusion: cross-attention, the KL autoencoder, the prompt condition and guidance, the
sampler, every stage trained by one command, resume, refused stages, the COCO config on random stages.

The smoke run reads the real fashion_mnist_scenes builder, prepared from tiny synthetic Fashion-MNIST idx files.
"""
import gzip
import json
import os
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxgen
from configs import t2i_coco, t2i_fashion_scenes
from jaxgen import bench, families, images, stages
from jaxgen.data import local_fashion_mnist
from jaxgen.errors import UserError
from jaxgen.families import autoencoder_kl, ddpm, t2i
from jaxgen.models.autoencoder_kl import AutoencoderKL
from jaxgen.models.unet import SpatialTransformer, UNet
from jaxgen.train import checkpointing, sharding
from jaxgen.train.state import create_state

PROMPTS = ['a red bag on the left', 'a blue sneaker at the top and a white coat at the bottom']


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
  """(data_dir, manual_dir): fashion_mnist_scenes of 64 train and 32 test scenes from synthetic Fashion-MNIST."""
  manual = tmp_path_factory.mktemp('fmnist')
  rng = np.random.default_rng(0)
  for split, n in (('train', 64), ('test', 32)):
    for name, array in zip(local_fashion_mnist.FILES[split],
                           (rng.integers(1, 256, (n, 28, 28), np.uint8), (np.arange(n) % 10).astype(np.uint8))):
      with gzip.open(manual / name, 'wb') as f:
        f.write(struct.pack(f'>I{array.ndim}I', 0x0800 | array.ndim, *array.shape) + array.tobytes())
  return str(tmp_path_factory.mktemp('tfds')), str(manual)


def smoke_config(scenes, **stage_workdirs):
  config = t2i_fashion_scenes.get_config('smoke')
  config.data.data_dir, config.data.manual_dir = scenes
  config.update(stage_workdirs)
  return config


@pytest.fixture(scope='module')
def trained(scenes, tmp_path_factory):
  """A t2i smoke run whose stages (a KL autoencoder, a BERT) the same call trains: (workdir, final state)."""
  workdir = str(tmp_path_factory.mktemp('t2i') / 'run')
  return workdir, stages.train_and_evaluate(smoke_config(scenes), workdir)


def _perturbed(params, scale=0.3):
  """params plus seeded noise, so that zero-initialised output layers take part."""
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda a: np.float32(a + scale * rng.standard_normal(a.shape)), params)


# ------------------------------------------------------------------------------------------- models

def test_cross_attention_ignores_the_features_of_padding_tokens():
  block = SpatialTransformer(num_heads=2, depth=1, norm_groups=4, dtype=jnp.float32)
  rng = np.random.default_rng(0)
  x, context = np.float32(rng.standard_normal((2, 4, 4, 8))), np.float32(rng.standard_normal((2, 5, 6)))
  mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  shapes = jax.eval_shape(block.init, jax.random.key(0), x, context, mask)
  params = _perturbed(jax.tree.map(lambda a: np.zeros(a.shape, np.float32), shapes))
  apply = jax.jit(block.apply)
  out = apply(params, x, context, mask)
  padding_changed = np.where(mask[..., None], context, 100 * rng.standard_normal(context.shape)).astype(np.float32)
  np.testing.assert_array_equal(apply(params, x, padding_changed, mask), out)
  real_changed = context.copy()
  real_changed[1, 0] += 1.0
  assert np.abs(apply(params, x, real_changed, mask) - out)[1].max() > 1e-3


def test_unet_with_the_transformer_options_off_is_the_ddpm_unet():
  """Its parameter tree is the DDPM UNet's, the names and sizes it had before transformer blocks existed, whatever
  the other transformer fields while transformer_resolutions is empty."""
  shape = dict(out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), norm_groups=4,
               num_classes=3)
  x, t = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32)
  trees = [jax.eval_shape(model.init, jax.random.key(0), x, t, t)['params']
           for model in (UNet(**shape), UNet(**shape, transformer_depth=3, transformer_heads=7))]
  assert sorted(trees[0]) == sorted([f'AttnBlock_{i}' for i in range(4)] + [f'Conv_{i}' for i in range(4)] + [
      'Dense_0', 'Dense_1', 'Embed_0', 'GroupNorm_0'] + [f'ResBlock_{i}' for i in range(8)])
  assert sum(a.size for a in jax.tree.leaves(trees[0])) == 45097 and trees[0] == trees[1]


def test_kl_term_is_the_closed_form_and_the_latent_grid_is_the_image_over_f():
  mean = np.array([1.0, -2.0, 0.5], np.float32).reshape(1, 1, 1, 3)
  logvar = np.log(np.array([1.0, 4.0, 0.25], np.float32)).reshape(1, 1, 1, 3)
  expected = 0.5 * sum(m**2 + v - 1 - np.log(v) for m, v in ((1, 1), (-2, 4), (0.5, 0.25)))
  np.testing.assert_allclose(autoencoder_kl.kl_divergence(mean, logvar), [expected], rtol=1e-6)
  for ch_mult, f in (((1, 2, 2), 4), ((1, 2, 2, 2), 8)):
    model = AutoencoderKL(z_channels=4, ch=8, ch_mult=ch_mult, norm_groups=4)
    x, z = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32), jax.ShapeDtypeStruct((2, 32 // f, 32 // f, 4), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, z)
    mean, logvar = jax.eval_shape(lambda p, x: model.apply(p, x, method=AutoencoderKL.encode), params, x)
    assert mean.shape == logvar.shape == (2, 32 // f, 32 // f, 4)
    assert jax.eval_shape(lambda p, z: model.apply(p, z, method=AutoencoderKL.decode), params, z).shape == x.shape


# ------------------------------------------------------------------------------------------- stages

def test_every_stage_is_trained_by_one_command_and_recorded_in_the_spec(trained):
  workdir, _ = trained
  spec, config = checkpointing.load_spec(workdir), checkpointing.load_config(workdir)
  assert spec.features.latent == (8, 8, 4) and spec.features.tokens == (24,) and spec.name == 'fashion_mnist_scenes'
  for name, family, steps in (('autoencoder', 'autoencoder_kl', 4), ('text_encoder', 'bert', 6)):
    stage = spec.stages[name]
    assert stage.workdir == os.path.join(workdir, name) and stage.step == steps
    assert checkpointing.load_config(stage.workdir).family == family
    assert stage.fingerprint == checkpointing.fingerprint(checkpointing.restore_run(stage.workdir, families.build)[3])
  captions = open(os.path.join(workdir, 'text_encoder', 'captions.txt')).read().splitlines()
  assert len(captions) == 64 and checkpointing.load_config(spec.stages.text_encoder.workdir).data.text_file.endswith(
      'captions.txt')
  assert len(spec.prompts) == 32 and config.autoencoder_workdir is None and config.text_encoder_workdir is None


def test_missing_or_changed_stages_are_refused_with_one_line(trained, scenes, tmp_path):
  """By the stage layer, and by the family that jaxgen.load_sampler, sample.py and eval build (t2i.build, not
  families.build, which keeps the Family this process built for the unchanged config and spec)."""
  workdir, _ = trained
  build = lambda workdir: t2i.build(checkpointing.load_config(workdir), checkpointing.load_spec(workdir))
  with pytest.raises(UserError, match=r'^the autoencoder of this run is not trained: train the run .*, or give '
                                      r'--config.autoencoder_workdir=DIR$'):
    stages.resolve(smoke_config(scenes), str(tmp_path / 'new'))
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  text_dir = checkpointing.load_spec(copy).stages.text_encoder.workdir      # the original's, outside the copy
  os.rename(text_dir, text_dir + '.moved')
  try:
    with pytest.raises(UserError, match=r'the stage .*text_encoder this run depends on is missing: restore it, or '
                                        r'train a new run \(--config.text_encoder_workdir=DIR names a trained one\)'):
      build(copy)
  finally:
    os.rename(text_dir + '.moved', text_dir)
  record = json.loads(open(checkpointing.spec_path(copy)).read())
  record['stages']['autoencoder']['fingerprint'] = '0' * 16
  open(checkpointing.spec_path(copy), 'w').write(json.dumps(record))
  with pytest.raises(UserError, match=r'is not the one this run was trained with \(fingerprint .*, recorded 0{16}\)'):
    build(copy)


def test_resumed_run_on_given_stages_equals_the_straight_run(trained, scenes, tmp_path, capsys):
  """The straight run's step-2 checkpoint, resumed in a copy on the stages given by workdir, ends where it did;
  a run on given stages records them as the run that trained them did."""
  workdir, straight = trained
  config = smoke_config(scenes, autoencoder_workdir=os.path.join(workdir, 'autoencoder'),
                        text_encoder_workdir=os.path.join(workdir, 'text_encoder'))
  assert stages.spec(config, str(tmp_path / 'fresh')) == checkpointing.load_spec(workdir)
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('autoencoder', 'text_encoder'))
  shutil.rmtree(copy / 'checkpoints' / '4')
  assert sorted(os.listdir(copy / 'checkpoints')) == ['2']
  resumed = stages.train_and_evaluate(config, str(copy))
  assert f'resumed from {copy}/checkpoints/2' in capsys.readouterr().out
  assert resumed.frozen is not None and 'encoder' not in resumed.params       # the frozen BERT rides along
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------- condition, sampler

def _restored(workdir):
  """(config, spec, state, denoiser, text encoder, (autoencoder config, spec, params)) of the t2i run."""
  config, spec, _, state = checkpointing.restore_run(workdir, families.build)
  encode, _ = jaxgen.load_encoder(spec.stages.text_encoder.workdir)
  text_config = checkpointing.load_config(spec.stages.text_encoder.workdir)
  model = t2i.make_model(config, tuple(spec.features.latent), text_config, encode.tokenizer.vocab_size)
  ae_config, ae_spec, _, ae_state = checkpointing.restore_run(spec.stages.autoencoder.workdir, families.build)
  return config, spec, state, model, encode, (ae_config, ae_spec, ae_state.sampling_params())


def test_guidance_is_the_negative_plus_w_times_the_difference_and_the_empty_prompt_is_the_null(trained):
  """eps~ = eps(neg) + w (eps(prompt) - eps(neg)): w = 1 is the conditional model, w = 0 the unconditional one
  (the empty prompt, [CLS] [SEP], what prompt dropout trains)."""
  config, _, state, model, encode, _ = _restored(trained[0])
  tokens, mask = encode.tokenize(PROMPTS)
  empty = encode.tokenize([''])
  assert empty[1].sum() == 2 and list(empty[0][0, :2]) == [encode.tokenizer.token_id(t) for t in ('[CLS]', '[SEP]')]
  text_features = jax.jit(encode.apply)
  cond = (text_features(encode.params, tokens, mask), mask)
  null = (text_features(encode.params, *empty), empty[1])
  params = _perturbed(state.sampling_params(), 0.05)                # a denoiser whose text matters
  eps_fn = jax.jit(lambda x, t, label: model.apply({'params': params}, x, t, label))
  x, t = np.float32(np.random.default_rng(0).standard_normal((2, 8, 8, 4))), np.array([10, 900])
  both = eps_fn(np.concatenate([x, x]), np.concatenate([t, t]),
                jax.tree.map(lambda c, u: jnp.concatenate([c, jnp.broadcast_to(u, c.shape)]), cond, null))
  eps_c, eps_u = both[:2], both[2:]
  assert float(jnp.abs(eps_c - eps_u).max()) > 1e-3                   # the prompt matters
  for w, expected in ((1.0, eps_c), (0.0, eps_u), (3.0, eps_u + 3.0 * (eps_c - eps_u))):
    guided = ddpm.guided_eps_fn(eps_fn, w - 1, null)(x, t, cond)      # what the t2i sampler runs for guidance w
    np.testing.assert_allclose(guided, expected, atol=1e-4)


def test_sampler_is_the_text_encoder_then_ddim_then_the_decoder(trained):
  """jaxgen.load_sampler's one jitted call = BERT features of the prompts and of the empty prompt, DDIM with
  guidance on the denoiser, and the autoencoder's decoder on z / s, composed by hand with the same key."""
  config, spec, state, model, encode, (ae_config, ae_spec, ae_params) = _restored(trained[0])
  w, steps, key = config.sampling.guidance, config.sampling.steps, jax.random.key(7)
  prompts = PROMPTS * 2                                              # the preview's shapes: compiled already
  images_ = jaxgen.load_sampler(trained[0])(key, prompt=prompts)
  assert images_.shape == (4, 32, 32, 3) and images_.dtype == np.uint8

  tokens, mask = encode.tokenize(prompts)
  empty = encode.tokenize([''])
  text_features = jax.jit(encode.apply)
  cond = (text_features(encode.params, tokens, mask), mask)
  null = (text_features(encode.params, *empty), empty[1])
  params = state.sampling_params()
  eps_fn = lambda x, t, label: model.apply({'params': params}, x, t, label)
  sched = ddpm.make_schedule(config.model.beta_schedule, config.model.timesteps)
  z = jax.jit(lambda: ddpm.sample(ddpm.guided_eps_fn(eps_fn, w - 1, null), sched, key, (4, 8, 8, 4), steps, 'ddim',
                                  cond, 0.0, config.sampling.sigma))()
  decode = jax.jit(lambda z: autoencoder_kl.make_model(ae_config, ae_spec).apply({'params': ae_params}, z,
                                                                                 method=AutoencoderKL.decode))
  decoded = decode(z / spec.latent_scale)
  expected = np.asarray(images.to_uint8(decoded, ae_config.data.pixel_range))
  assert np.abs(images_.astype(int) - expected).max() <= 1


def test_sample_cli_writes_the_prompts_images(trained, cli, tmp_path):
  out = tmp_path / 'x.png'
  # the preview's shapes (4 images, 3 steps, guidance 3): the program the fixture compiled, from the cache
  cli('sample.py', '--workdir', trained[0], '--prompt', PROMPTS[1], '--negative_prompt', 'a red bag', '--num', '4',
      '--guidance', '3', '--steps', '3', '--out', str(out), mock_data=False)
  images_ = jaxgen.load_sampler(trained[0])(jax.random.key(0), prompt=PROMPTS[1], num=4, guidance=3.0, steps=3,
                                            negative_prompt='a red bag')
  np.testing.assert_array_equal(np.asarray(Image.open(out)), images.make_grid(images_))


# ------------------------------------------------------------------------------------------- random stages

def test_coco_config_benchmarks_on_random_stages_and_a_joint_encoder_learns():
  """Without trained stages, bench's spec records random ones (no data read): the COCO config builds, and with
  model.text_encoder=joint its train steps change the text encoder's parameters, which live in params."""
  config = t2i_coco.get_config('smoke')
  config.model.text_encoder = 'joint'
  spec = stages.spec(config, '/unused')
  assert spec.stages.autoencoder.workdir is None and 'text_encoder' not in spec.stages and spec.features.tokens == (48,)
  assert spec.features.latent == (8, 8, 4)                          # 64x64 at f = 8
  family = families.build(config, spec)
  mesh = sharding.make_mesh(config.mesh)
  state, _ = create_state(family, mesh, config.seed)
  before = jax.tree.map(np.array, state.params['encoder'])
  # 3 steps: the zero-initialised output conv moves first, then the transformers' proj_out, then what feeds them
  record, state = bench.bench_train(config, spec, family, mesh, state, steps=1, warmup=2)
  assert record['examples_per_s'] > 0 and state.frozen is None
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params['encoder'], before)
  assert changed['encoder']['wte']['embedding'] and changed['encoder']['h_0']['attn']['c_attn']['kernel']
