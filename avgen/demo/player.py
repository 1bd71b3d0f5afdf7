"""The studio's streaming player: chunks of a clip (`avgen.api.stream`) played as they arrive, the sound
through the Web Audio API (each chunk's buffer scheduled right after the last, so there is no gap
unless a chunk comes late) and the picture drawn on a canvas from the audio clock, so the two stay
locked together. Written for the browser alone: Gradio's own streaming outputs need ffmpeg binaries.

`payload` turns a chunk into the JSON the page receives; PLAYER_JS (loaded with the page) defines
`window.avgenStream`, whose `stats` the browser test reads: the time from pressing Stream to the first
sound and the first picture, and every gap.
"""
from __future__ import annotations

import base64

import numpy as np

from avgen.api.stream import StreamChunk


def payload(chunk: StreamChunk, stream_id: str) -> dict:
    """A chunk of stream `stream_id` as JSON: frames as 8-bit pixels and sound as 16-bit samples, both base64."""
    frames = np.clip(np.rint(chunk.frames * 255), 0, 255).astype(np.uint8)
    audio = np.clip(np.rint(chunk.audio * 32767), -32768, 32767).astype("<i2")
    t, h, w, c = frames.shape
    return {"stream": stream_id, "index": chunk.index, "start": chunk.start_s, "fps": chunk.fps, "sample_rate": chunk.sample_rate,
            "frames": base64.b64encode(frames.tobytes()).decode(), "shape": [t, h, w, c],
            "audio": base64.b64encode(audio.tobytes()).decode(), "made_s": round(chunk.made_s, 4)}


PLAYER_HTML = """<div id="stream-player" style="display:flex;gap:12px;align-items:center">
<canvas id="stream-canvas" width="32" height="32"
 style="width:192px;height:192px;image-rendering:pixelated;background:#000;border-radius:6px"></canvas>
<div id="stream-status" style="font-family:monospace;font-size:0.9em">press Stream: the clip plays while it is made</div>
</div>"""

PLAYER_JS = """() => {
  const bytes = (b64) => Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  window.avgenStream = {
    start() {
      this.clicked = performance.now();
      this.ctx = this.ctx || new (window.AudioContext || window.webkitAudioContext)();
      this.ctx.resume();
      (this.sources || []).forEach((src) => { try { src.stop(); } catch (e) {} });  // a stream still playing
      this.sources = []; this.stream = null;  // chunks of an earlier stream that arrive late are ignored
      this.next = null; this.t0 = null; this.chunks = []; this.ended = false;
      this.stats = {first_sound_ms: null, first_picture_ms: null, first_made_ms: null, chunks: 0, gaps_s: [], lead_s: [], seconds: 0};
      this.status('waiting for the first chunk...');
      if (!this.drawing) { this.drawing = true; requestAnimationFrame(() => this.draw()); }
    },
    status(text) { const el = document.getElementById('stream-status'); if (el) el.textContent = text; },
    push(c) {
      if (!c || !this.ctx) return;
      if (this.stream === null && c.index === 0) this.stream = c.stream;
      if (c.stream !== this.stream) return;
      if (c.end) { this.ended = true; this.status(`done: ${this.stats.seconds.toFixed(1)} s in ${this.stats.chunks} chunks`); return; }
      const ctx = this.ctx;
      const pcm = new Int16Array(bytes(c.audio).buffer);
      const buf = ctx.createBuffer(1, pcm.length, c.sample_rate);
      const ch = buf.getChannelData(0);
      for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
      const src = ctx.createBufferSource(); src.buffer = buf; src.connect(ctx.destination);
      if (this.next === null) {
        this.next = ctx.currentTime + 0.02;
        this.t0 = this.next - c.start;
        this.stats.first_sound_ms = performance.now() - this.clicked + 20;
        this.stats.first_made_ms = 1000 * c.made_s;  // of which the server took this to make it
      } else {
        const late = ctx.currentTime - this.next;  // the last chunk ran out before this one came: a gap
        if (late > 0) { this.stats.gaps_s.push(late); this.next = ctx.currentTime; this.t0 += late; }
        this.stats.lead_s.push(this.next - ctx.currentTime);
      }
      src.start(this.next);
      this.sources.push(src);
      this.next += pcm.length / c.sample_rate;
      const [t, h, w, cc] = c.shape;
      this.chunks.push({start: c.start, fps: c.fps, t, h, w, c: cc, data: bytes(c.frames)});
      this.stats.chunks += 1; this.stats.seconds += pcm.length / c.sample_rate;
      this.status(`playing: ${this.stats.seconds.toFixed(1)} s made, chunk ${c.index + 1}`);
    },
    draw() {
      requestAnimationFrame(() => this.draw());
      if (!this.ctx || this.t0 === null || !this.chunks.length) return;
      const now = this.ctx.currentTime - this.t0;
      if (now < 0) return;
      const chunk = this.chunks.find((k) => now >= k.start && now < k.start + k.t / k.fps);
      if (!chunk) return;
      const i = Math.min(chunk.t - 1, Math.floor((now - chunk.start) * chunk.fps));
      const canvas = document.getElementById('stream-canvas');
      if (!canvas) return;
      if (canvas.width !== chunk.w) { canvas.width = chunk.w; canvas.height = chunk.h; }
      const g = canvas.getContext('2d');
      const img = g.createImageData(chunk.w, chunk.h);
      const n = chunk.w * chunk.h, base = i * n * chunk.c;
      for (let p = 0; p < n; p++) {
        const q = base + p * chunk.c;
        img.data[4 * p] = chunk.data[q];
        img.data[4 * p + 1] = chunk.data[q + (chunk.c > 1 ? 1 : 0)];
        img.data[4 * p + 2] = chunk.data[q + (chunk.c > 2 ? 2 : 0)];
        img.data[4 * p + 3] = 255;
      }
      g.putImageData(img, 0, 0);
      if (this.stats.first_picture_ms === null) this.stats.first_picture_ms = performance.now() - this.clicked;
    },
  };
}"""

__all__ = ["PLAYER_HTML", "PLAYER_JS", "payload"]
