"""DDPM on pitched instrument notes (audio): a UNet on 128-mel x 32-frame log-mel spectrograms of 1.024 s
notes at 16 kHz, conditioned on the MIDI pitch, with classifier-free guidance; Griffin-Lim back to audio.

Data: jaxgen_notes (rendered offline with fluidsynth: 10 GM instruments x C3..C6 x 4 velocities), or NSynth
online with --config.data.name=nsynth/gansynth_subset (4 s notes: the first 1.024 s are used).

python train.py --config configs/ddpm_notes.py:cpu --workdir runs/notes
python sample.py --workdir runs/notes --num 4 --label 60 --guidance 2 --out notes.wav
python sample.py --workdir runs/notes --melody 60,62,64,65,67 --out melody.wav
"""
import ml_collections

from jaxgen.config import apply_preset, sibling_config, smoke, set_schedule


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = sibling_config(__file__, 'ddpm_fashion_mnist', 'default')   # the DDPM recipe (Ho et al.)
  c.family = 'ddpm_audio'
  c.data.modality = 'audio'
  c.data.name = 'jaxgen_notes'
  c.data.audio_key = 'audio'
  c.data.label_key = 'pitch'
  c.data.clip_samples = 16_384       # 1.024 s at 16 kHz: 32 STFT frames of hop 512
  c.data.pitch_range = (48, 84)      # MIDI pitches previews and evaluation ask for (C3..C6)
  c.data.eval_examples = 370         # the jaxgen_notes test split
  c.num_preview = 8

  m = c.model
  m.ch = 64
  m.ch_mult = (1, 2, 2, 2)           # 128x32 -> 64x16 -> 32x8 -> 16x4
  m.attn_resolutions = (16,)         # the 16x4 level (the first spatial size is the mel axis)
  m.num_classes = 128                # MIDI pitches; label 128 is the null label (classifier-free guidance)
  m.p_uncond = 0.1
  m.random_flip = False
  m.row_coordinate = True            # the UNet sees each mel row's position: where a harmonic sits is its pitch
  m.harmonic_profile = True          # ... and the mel rows of the requested pitch's harmonics, as a channel
  c.sampling.steps = 50
  c.sampling.guidance = 2.0
  c.sampling.griffin_lim_iters = 64  # phase reconstruction iterations in the sampler
  set_schedule(c, 100_000, log=100, eval=5_000, checkpoint=5_000, sample=5_000)

  def cpu(c):
    c.batch_size = 16
    c.learning_rate = 1e-3
    set_schedule(c, 1_200, log=50, eval=600, checkpoint=400, sample=400)
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.995
    m.ch = 16
    m.ch_mult = (1, 1, 2, 4)         # 16 @ 128x32 and 64x16, 32 @ 32x8, 64 @ 16x4: 1.1 GFLOP a training example
    m.num_res_blocks = 1
    m.attn_resolutions = ()          # self-attention only in the middle (16x4)
    m.dropout = 0.0
    m.norm_groups = 8

  def smoke_(c):
    smoke(c, steps=4, checkpoint=4, num_preview=2)
    c.optim.warmup_steps = 0
    m.ch = 8
    m.ch_mult = (1, 2)
    m.num_res_blocks = 1
    m.attn_resolutions = ()
    m.dropout = 0.0
    m.norm_groups = 4
    c.sampling.steps = 3
    c.sampling.griffin_lim_iters = 4

  return apply_preset(c, preset, cpu=cpu, smoke=smoke_)
