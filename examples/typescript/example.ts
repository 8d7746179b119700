// Every call of gitcap's public API, type-checked with `tsc --noEmit -p examples/typescript`
// (tests/e2e/module-types.test.mjs runs it).
import {
  Captioner, fillMissingAlt, storedModels, clearStoredModels, availableThreads, MODELS, DEFAULT_MODEL, formatBytes,
  type CaptionResult, type CaptionerInfo, type LoadProgress, type FillMissingAltEntry,
} from 'gitcap';

export async function main(file: File, img: HTMLImageElement, canvas: HTMLCanvasElement): Promise<void> {
  const controller = new AbortController();
  const captioner: Captioner = await Captioner.load({
    model: 'hf:microsoft/git-large-r-coco',
    store: 'q8_0',
    threads: undefined,
    onProgress: (p: LoadProgress) => console.log(p.phase, p.loadedBytes, p.totalBytes, p.file),
    onEvent: (e) => {
      if (e.type === 'plan') console.log(e.total, e.fromCache);
    },
    signal: controller.signal,
  });

  const { text, tokenIds }: CaptionResult = await captioner.caption(file, {
    maxNewTokens: 20,
    beams: 1,
    lengthPenalty: 1.0,
    prompt: '',
    onToken: (fragment: string) => console.log(fragment),
    signal: controller.signal,
  });
  console.log(text, tokenIds.length);

  // Every input type.
  const bitmap = await createImageBitmap(file);
  const ctx = canvas.getContext('2d')!;
  const inputs = [
    file,
    await file.arrayBuffer(),
    new Uint8Array(await file.arrayBuffer()),
    img,
    bitmap,
    canvas,
    new OffscreenCanvas(4, 4),
    ctx.getImageData(0, 0, 4, 4),
    'https://example.org/photo.jpg',
    new URL('https://example.org/photo.jpg'),
  ];
  for (const input of inputs) {
    const r = await captioner.caption(input);
    console.log(r.decodedBy, r.note ?? '', r.timings.totalMs);
  }

  const entries: FillMissingAltEntry[] = await fillMissingAlt(document.querySelector('article')!, {
    captioner,
    maxNewTokens: 20,
    includeEmpty: false,
    onImage: (entry) => console.log(entry.img.src),
  });
  for (const e of entries) console.log('text' in e ? e.text : e.error.message);

  const info: CaptionerInfo = captioner.info;
  const weights: string = info.weights;
  console.log(info.model, weights, info.threads, info.backend, captioner.restarts);
  console.log(await captioner.stats());
  captioner.dispose();

  const stored = await storedModels();
  for (const m of stored.entries) console.log(m.label, formatBytes(m.bytes), m.complete);
  await clearStoredModels();
  console.log(availableThreads(), MODELS.length, DEFAULT_MODEL.id);
}
