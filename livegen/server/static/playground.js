// The playground page: controls -> `generate` inputs on one socket; frames -> the output image.
import {LivegenClient} from './livegen.js';

const $ = (id) => document.getElementById(id);

// The server mints this page a short-lived token (token null: it needs none). It does so only for
// its own playground opened on this machine; anywhere else the refusal says why.
async function playgroundToken() {
  const response = await fetch('/v1/playground/token', {method: 'POST'});
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(body?.code ? `${body.code}: ${body.message}` : `no token: HTTP ${response.status}`);
  }
  return body;
}

const client = new LivegenClient({tokenProvider: playgroundToken});
window.livegen = client; // for the console and the browser tests

const SIMILARITY_THRESHOLD = 0.98; // a still camera frame scores above this against its predecessor
const sliders = ['blend', 'seed', 'steps', 'guidance', 'strength'];
let current = null; // {blob, url, frame}: what the output shows
let camera = null; // {stream, canvas} while the camera runs
let polling = null;

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

function selectedModel() {
  return client.hello?.models.find((m) => m.name === $('model').value);
}

function params() {
  const [width, height] = $('size').value.split('x').map(Number);
  const input = {
    prompt: $('prompt').value,
    model: $('model').value || null,
    seed: Number($('seed').value),
    steps: Number($('steps').value),
    guidance: Number($('guidance').value),
    width: width || 0,
    height: height || 0,
  };
  if (Number($('blend').value) > 0) {
    input.blend_prompt = $('blend-prompt').value;
    input.blend = Number($('blend').value);
  }
  return input;
}

// Text mode sends on every change; camera mode picks the new settings up with its next frame.
function render() {
  for (const name of sliders) $(`${name}-value`).textContent = $(name).value;
  if (!camera && client.hello?.ready) client.send(params());
}

function fillSelect(select, values, keep) {
  select.replaceChildren(...values.map((v) => new Option(v, v)));
  if (values.includes(keep)) select.value = keep;
}

function fillSizes() {
  const model = selectedModel();
  fillSelect($('size'), (model?.sizes ?? []).map(([w, h]) => `${w}x${h}`), $('size').value);
  $('camera-toggle').disabled = !model?.image_to_image;
}

function onModelChange() {
  fillSizes();
  const model = selectedModel();
  if (model) $('guidance').value = model.default_guidance;
  render();
}

async function pollReadiness() {
  if (polling) return;
  polling = setInterval(async () => {
    try {
      const response = await fetch('/readyz');
      const body = await response.json();
      if (body.ready) {
        clearInterval(polling);
        polling = null;
        client.reconnect(); // a fresh hello lists every warm model
      } else if (body.error) {
        setStatus('error', `Model missing or failed to load: ${body.error}`);
      } else {
        setStatus('warming', 'Server is loading and warming its models…');
      }
    } catch {
      // the server is down; the socket's reconnect reports that
    }
  }, 1000);
}

client.addEventListener('status', ({detail}) => {
  if (detail.state === 'reconnecting') {
    setStatus('reconnecting', `Connection lost (${detail.reason}); reconnecting, attempt ${detail.attempt}…`);
  } else if (detail.state === 'connecting' && $('status').dataset.state !== 'reconnecting') {
    setStatus('connecting', 'Connecting…');
  }
});

client.addEventListener('hello', ({detail: hello}) => {
  if (!hello.ready) {
    setStatus('warming', 'Server is loading and warming its models…');
    pollReadiness();
    return;
  }
  const names = hello.models.map((m) => m.name);
  fillSelect($('model'), names, $('model').value);
  const model = selectedModel();
  if (model && !$('guidance').dataset.touched) $('guidance').value = model.default_guidance;
  fillSizes();
  showSpeech(hello.speech);
  setStatus('open', `Connected: ${names.join(', ')}${hello.speech ? ' and speech' : ''} on ${model?.device ?? '?'}`);
  render();
});

client.addEventListener('frame', ({detail: {frame, blob}}) => {
  if (current) URL.revokeObjectURL(current.url);
  current = {blob, frame, url: URL.createObjectURL(blob)};
  $('output').src = current.url;
  $('output').dataset.frameId = frame.id;
  $('output-caption').textContent = frame.drawn ? `Output: drawn as “${frame.drawn}”` : 'Output';
  $('save').disabled = false;
  $('hud-timings').replaceChildren(...Object.entries(frame.timings).flatMap(([stage, ms]) => {
    const dt = document.createElement('dt');
    const dd = document.createElement('dd');
    dt.textContent = stage.replace(/_ms$/, '');
    dd.textContent = ms.toFixed(1);
    return [dt, dd];
  }));
  if ($('status').dataset.state === 'error') setStatus('open', 'Connected');
  updateHud();
});

client.addEventListener('blocked', ({detail: blocked}) => {
  setStatus('error', `Blocked by safety (${blocked.stage}, ${blocked.category}): ${blocked.message}`);
  updateHud();
});

client.addEventListener('error', ({detail: error}) => {
  if (error.code === 'not_ready') {
    setStatus('warming', 'Server is loading and warming its models…');
    pollReadiness();
  } else {
    setStatus('error', `${error.code}: ${error.message}`);
  }
});

function updateHud() {
  const s = client.stats.summary();
  const ms = (v) => (v === null ? '–' : `${v.toFixed(0)} ms`);
  $('hud-fps').textContent = s.fps.toFixed(1);
  $('hud-p50').textContent = ms(s.p50);
  $('hud-p95').textContent = ms(s.p95);
  $('hud-frames').textContent = s.frames;
  $('hud-superseded').textContent = s.superseded + s.dropped;
  $('hud-skipped').textContent = s.skipped;
  $('hud-blocked').textContent = s.blocked;
}

// ------------------------------------------------------------------ camera filter

async function startCamera() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480}, audio: false});
  } catch (error) {
    const why = error.name === 'NotAllowedError' ? 'permission denied' : error.message || error.name;
    setStatus('error', `Camera unavailable: ${why} (${error.name}). Allow camera access and try again.`);
    return;
  }
  $('camera').srcObject = stream;
  $('camera-view').hidden = false;
  $('camera-toggle').textContent = 'Stop camera';
  camera = {stream, canvas: document.createElement('canvas')};
  cameraLoop(camera);
}

function stopCamera() {
  camera.stream.getTracks().forEach((track) => track.stop());
  camera = null;
  $('camera').srcObject = null;
  $('camera-view').hidden = true;
  $('camera-toggle').textContent = 'Start camera';
  render();
}

// Downscale and centre-crop the video to the model's size, as JPEG bytes.
async function captureFrame({canvas}, width, height) {
  const video = $('camera');
  canvas.width = width;
  canvas.height = height;
  const scale = Math.max(width / video.videoWidth, height / video.videoHeight);
  const w = video.videoWidth * scale;
  const h = video.videoHeight * scale;
  canvas.getContext('2d').drawImage(video, (width - w) / 2, (height - h) / 2, w, h);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/jpeg', 0.9));
  return new Uint8Array(await blob.arrayBuffer());
}

// Each new camera frame at most once, and only when an input slot is free: the filter runs at
// the rate the model allows and never builds a backlog.
function nextVideoFrame(video) {
  return new Promise((resolve) => ('requestVideoFrameCallback' in video
    ? video.requestVideoFrameCallback(resolve) : requestAnimationFrame(resolve)));
}

async function cameraLoop(session) {
  while (camera === session) {
    await nextVideoFrame($('camera'));
    if (!client.canSend || !client.hello?.ready || $('camera').readyState < 2) continue;
    const input = params();
    const [width, height] = input.width ? [input.width, input.height] : selectedModel().sizes[0];
    input.image = await captureFrame(session, width, height);
    input.strength = Number($('strength').value);
    if ($('skip-still').checked) input.similarity_filter = SIMILARITY_THRESHOLD;
    if (camera === session) client.send(input);
  }
}

// ------------------------------------------------------------------ speech

// Chunks play back to back from a short jitter buffer; a chunk that arrives after the audio
// before it has finished is an underrun (an audible gap), counted in the page.
const PLAYOUT_DELAY_S = 0.15;
const speech = {context: null, id: null, sentAt: 0, nextTime: 0, started: false, chunks: 0, underruns: 0,
                sources: []};
window.livegenSpeech = speech; // for the console and the browser tests

function stopPlayback() {
  speech.sources.forEach((source) => source.stop());
  speech.sources = [];
}

function speak() {
  speech.context ??= new AudioContext();
  speech.context.resume();
  stopPlayback(); // the server stops the old utterance too (barge-in)
  Object.assign(speech, {started: false, chunks: 0, underruns: 0, sentAt: performance.now()});
  speech.id = client.speak({text: $('speak-text').value, voice: $('voice').value || null});
  $('speech-ttfa').textContent = '…';
  $('speech-underruns').textContent = '0';
}

function stopSpeech() {
  if (speech.id) client.cancel(speech.id);
  speech.id = null;
  stopPlayback();
}

client.addEventListener('audio', ({detail: {chunk, samples}}) => {
  if (chunk.id !== speech.id) return; // an utterance stopped here whose chunks were on the wire
  const context = speech.context;
  if (!speech.started) {
    speech.started = true;
    $('speech-ttfa').textContent = `${(performance.now() - speech.sentAt).toFixed(0)} ms`;
    speech.nextTime = context.currentTime + PLAYOUT_DELAY_S;
  } else if (speech.nextTime < context.currentTime) {
    speech.underruns += 1;
    $('speech-underruns').textContent = speech.underruns;
    speech.nextTime = context.currentTime + PLAYOUT_DELAY_S;
  }
  const buffer = context.createBuffer(1, samples.length, chunk.sample_rate);
  buffer.copyToChannel(samples, 0);
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  source.start(speech.nextTime);
  speech.sources.push(source);
  speech.nextTime += buffer.duration;
  speech.chunks += 1;
});

function showSpeech(info) {
  $('speech').hidden = !info;
  if (!info) return;
  // '' sends no voice: the server picks the default voice of the text's language (English or Japanese)
  fillSelect($('voice'), ['', ...info.voices], $('voice').value);
  $('voice').options[0].text = 'auto';
  $('voice').title = `auto: ${info.default_voice} for English, a Japanese voice for text with kana`;
}

// ------------------------------------------------------------------ wiring

// The file saved is the server's export of the frame on screen: the same pixels with signed
// Content Credentials (C2PA) saying livegen made it, with which model, steps and seed.
async function save() {
  const {frame} = current;
  try {
    const url = URL.createObjectURL(await client.export(frame.id));
    const link = document.createElement('a');
    link.href = url;
    link.download = `livegen-${frame.model}-seed${frame.seed}-${frame.id}.${frame.format === 'jpeg' ? 'jpg' : frame.format}`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (error) {
    setStatus('error', `Save failed: ${error.message}`);
  }
}

$('prompt').addEventListener('input', render);
$('blend-prompt').addEventListener('input', render);
for (const name of sliders) $(name).addEventListener('input', render);
$('guidance').addEventListener('input', () => { $('guidance').dataset.touched = '1'; });
$('model').addEventListener('change', onModelChange);
$('size').addEventListener('change', render);
$('camera-toggle').addEventListener('click', () => (camera ? stopCamera() : startCamera()));
$('save').addEventListener('click', save);
$('speak').addEventListener('click', speak);
$('stop-speech').addEventListener('click', stopSpeech);
setInterval(updateHud, 500);
render();
client.connect();
