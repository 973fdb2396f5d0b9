"""TFDS `jaxgen_notes`: NSynth-like pitched instrument notes rendered offline from General MIDI with fluidsynth.

Each example is one MIDI note (pitch, velocity) played on one GM instrument: note-on at 0, note-off at
HOLD_S, rendered by the fluidsynth CLI from a SoundFont (Debian `timgm6mb-soundfont`, or any GM .sf2 given as
manual_dir / JAXGEN_SOUNDFONT) at 16 kHz with reverb and chorus off, mixed to mono, cut to CLIP_SAMPLES
(1.024 s) and peak-normalised to PEAK of full scale (loudness is the same for every note; velocity changes
the timbre where the SoundFont has velocity layers). Features, as NSynth's: audio int16 (CLIP_SAMPLES,),
pitch (MIDI 0..127), velocity, instrument (name), instrument_family (NSynth family names).

Split: for every (instrument, pitch), one of the VELOCITIES (drawn with the builder's fixed seed) goes to
`test`, the rest to `train`, so both splits hold every pitch of every instrument. Rendering is deterministic:
the same SoundFont and fluidsynth give the same bytes.
"""
import concurrent.futures
import os
import shutil
import subprocess
import tempfile
from typing import NamedTuple

import numpy as np
import scipy.io.wavfile
import tensorflow_datasets as tfds

from jaxgen.errors import UserError

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_384          # 1.024 s
HOLD_S = 0.8                   # note-off time; the release decays inside the clip
PEAK = 0.9
PITCHES = tuple(range(48, 85))  # C3..C6
VELOCITIES = (50, 75, 100, 127)
SEED = 0
# GM program (0-based) -> (name, NSynth instrument family)
INSTRUMENTS = {
    0: ('acoustic_grand_piano', 'keyboard'), 4: ('electric_piano', 'keyboard'), 11: ('vibraphone', 'mallet'),
    19: ('church_organ', 'organ'), 24: ('nylon_guitar', 'guitar'), 32: ('acoustic_bass', 'bass'),
    40: ('violin', 'string'), 56: ('trumpet', 'brass'), 66: ('tenor_sax', 'reed'), 73: ('flute', 'flute'),
}
FAMILIES = ('bass', 'brass', 'flute', 'guitar', 'keyboard', 'mallet', 'organ', 'reed', 'string', 'synth_lead',
            'vocal')
SOUNDFONTS = ('/usr/share/sounds/sf2/TimGM6mb.sf2', '/usr/share/sounds/sf2/FluidR3_GM.sf2')
INSTALL_HINT = ('apt-get install fluidsynth timgm6mb-soundfont (or pass a General MIDI .sf2 as '
                '--config.data.manual_dir=DIR or JAXGEN_SOUNDFONT=FILE)')


class Note(NamedTuple):
  program: int
  pitch: int
  velocity: int
  split: str


def note_table(seed: int = SEED) -> list[Note]:
  """Every (program, pitch, velocity) with its split: one velocity per (program, pitch) is `test`."""
  rng = np.random.default_rng(seed)
  notes = []
  for program in INSTRUMENTS:
    for pitch in PITCHES:
      test_velocity = VELOCITIES[rng.integers(len(VELOCITIES))]
      notes += [Note(program, pitch, v, 'test' if v == test_velocity else 'train') for v in VELOCITIES]
  return notes


def find_soundfont(manual_dir: str | None = None) -> str:
  """The .sf2 to render with: JAXGEN_SOUNDFONT, else the first .sf2 in manual_dir, else a Debian GM font."""
  candidates = [os.environ.get('JAXGEN_SOUNDFONT', '')]
  if manual_dir and os.path.isdir(manual_dir):
    candidates += sorted(os.path.join(manual_dir, f) for f in os.listdir(manual_dir) if f.endswith('.sf2'))
  candidates += SOUNDFONTS
  for path in candidates:
    if path and os.path.isfile(path):
      return path
  raise UserError(f'jaxgen_notes needs a General MIDI SoundFont and none was found: {INSTALL_HINT}')


def _midi_file(path: str, program: int, pitch: int, velocity: int) -> None:
  """One note on channel 0 (not 9, the drums): program change, note-on at 0, note-off at HOLD_S."""
  import mido
  ticks_per_s = 960                  # 480 ticks a beat at the default 120 bpm
  track = mido.MidiTrack([
      mido.Message('program_change', program=program, time=0),
      mido.Message('note_on', note=pitch, velocity=velocity, time=0),
      mido.Message('note_off', note=pitch, velocity=0, time=round(HOLD_S * ticks_per_s)),
      mido.MetaMessage('end_of_track', time=round((CLIP_SAMPLES / SAMPLE_RATE - HOLD_S) * ticks_per_s) + 96)])
  mido.MidiFile(ticks_per_beat=480, tracks=[track]).save(path)


def render_note(program: int, pitch: int, velocity: int, soundfont: str) -> np.ndarray:
  """int16 (CLIP_SAMPLES,): the note rendered by fluidsynth, mono, peak-normalised to PEAK."""
  if shutil.which('fluidsynth') is None:
    raise UserError(f'rendering jaxgen_notes needs the fluidsynth program: {INSTALL_HINT}')
  with tempfile.TemporaryDirectory() as tmp:
    midi, wav = os.path.join(tmp, 'note.mid'), os.path.join(tmp, 'note.wav')
    _midi_file(midi, program, pitch, velocity)
    subprocess.run(['fluidsynth', '-n', '-i', '-q', '-r', str(SAMPLE_RATE), '-O', 's16', '-T', 'wav',
                    '-o', 'synth.reverb.active=0', '-o', 'synth.chorus.active=0', '-g', '1.0',
                    '-F', wav, soundfont, midi], check=True, capture_output=True)
    rate, pcm = scipy.io.wavfile.read(wav)
  if rate != SAMPLE_RATE:
    raise RuntimeError(f'fluidsynth wrote {rate} Hz, not {SAMPLE_RATE}')
  wave = pcm.astype(np.float64).reshape(len(pcm), -1).mean(axis=1)[:CLIP_SAMPLES]
  wave = np.pad(wave, (0, CLIP_SAMPLES - len(wave)))
  peak = np.abs(wave).max()
  if peak == 0:
    raise RuntimeError(f'fluidsynth rendered silence for program {program}, pitch {pitch}: is {soundfont} GM?')
  return np.round(wave / peak * PEAK * 32767).astype(np.int16)


class JaxgenNotes(tfds.core.GeneratorBasedBuilder):
  """Pitched notes of 10 GM instruments x 37 pitches (C3..C6) x 4 velocities, rendered with fluidsynth."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: 1480 notes of 1.024 s at 16 kHz.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Optional: a directory holding a General MIDI .sf2 SoundFont; else {INSTALL_HINT}.'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'audio': tfds.features.Audio(shape=(CLIP_SAMPLES,), dtype=np.int16, sample_rate=SAMPLE_RATE),
            'pitch': tfds.features.Scalar(np.int32),
            'velocity': tfds.features.Scalar(np.int32),
            'instrument': tfds.features.ClassLabel(names=[name for name, _ in INSTRUMENTS.values()]),
            'instrument_family': tfds.features.ClassLabel(names=FAMILIES),
        }),
        supervised_keys=('audio', 'pitch'))

  def _split_generators(self, dl_manager):
    try:
      manual_dir = str(dl_manager.manual_dir)
    except AssertionError:             # none given (or empty): the installed SoundFonts
      manual_dir = None
    soundfont = find_soundfont(manual_dir)
    notes = note_table()
    return {split: self._generate_examples([n for n in notes if n.split == split], soundfont)
            for split in ('train', 'test')}

  def _generate_examples(self, notes: list[Note], soundfont: str):
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:   # fluidsynth processes in parallel
      waves = pool.map(lambda n: render_note(n.program, n.pitch, n.velocity, soundfont), notes)
      for note, wave in zip(notes, waves):
        name, family = INSTRUMENTS[note.program]
        yield f'{name}-{note.pitch:03d}-{note.velocity:03d}', {
            'audio': wave, 'pitch': note.pitch, 'velocity': note.velocity, 'instrument': name,
            'instrument_family': family}
