#!/usr/bin/env python3
"""How visible are dicom-samples' radiograph nodules? (models/README.md, "Demo models".)

Generates synthetic chest radiographs with the project's own `dicom-samples` CLI, reads them
with pydicom (an independent DICOM reader) and reports:

1. per nodule, the mean stored value inside the nodule minus the mean of the ring around it
   (1.3–2 radii), against the ring's standard deviation (ribs, vessels);
2. the ROC AUC of a plain blob detector: difference of Gaussians (FFT, numpy), maximum inside
   the darker third of the image, image has a nodule or not.

Usage: radiograph_nodule_contrast.py DICOM_SAMPLES_BIN [--studies 300] [--seed 77]
"""

import argparse
import glob
import json
import os
import subprocess
import tempfile

import numpy as np
import pydicom


def displayed(path):
    """Pixels windowed to 0..1 as displayed (MONOCHROME1 inverted), and the raw values
    with MONOCHROME1 inverted so that tissue is bright in both."""
    d = pydicom.dcmread(path)
    raw = d.pixel_array.astype(float)
    centre, width = float(d.WindowCenter), float(d.WindowWidth)
    shown = np.clip((raw - (centre - width / 2)) / width, 0, 1)
    if d.PhotometricInterpretation == "MONOCHROME1":
        shown = 1 - shown
        raw = raw.max() - raw
    return shown, raw


def gaussian_filter(shape, sigma):
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    return np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))


def roc_auc(scores, labels):
    s, l = np.asarray(scores), np.asarray(labels)
    pos, neg = s[l == 1], s[l == 0]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return greater + 0.5 * ties


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dicom_samples")
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--seed", type=int, default=77)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [args.dicom_samples, "generate", "--out", out, "--seed", str(args.seed),
             "--ct", "0", "--xray", str(args.studies), "--xray-size", "512", "--quiet"],
            check=True,
        )
        filters = None
        contrasts, ring_spreads, scores, labels = [], [], [], []
        for truth_path in sorted(glob.glob(os.path.join(out, "studies", "*", "ground_truth.json"))):
            truth = json.load(open(truth_path))["radiograph"]
            image_path = glob.glob(os.path.join(os.path.dirname(truth_path), "*.dcm"))[0]
            shown, raw = displayed(image_path)
            spacing = truth["imager_pixel_spacing_mm"][0]
            nodules = [f for f in truth["findings"] if f["label"] == "nodule"]
            rows, columns = np.mgrid[: raw.shape[0], : raw.shape[1]]
            for n in nodules:
                cx, cy = n["center_px"]
                radius = n["size_mm"] / 2 / spacing
                distance = np.hypot(columns - cx, rows - cy)
                ring = raw[(distance > 1.3 * radius) & (distance < 2 * radius)]
                contrasts.append(raw[distance < 0.7 * radius].mean() - ring.mean())
                ring_spreads.append(ring.std())
            spectrum = np.fft.fft2(shown)
            if filters is None:
                filters = {s: gaussian_filter(shown.shape, s) for s in (3, 4.5, 6, 8, 11, 15, 22, 30)}
            background = np.real(np.fft.ifft2(spectrum * filters[30]))
            lung = background < np.percentile(background, 35)
            best = -np.inf
            for radius_px in (4, 6, 9, 13):
                sigma = radius_px / np.sqrt(2)
                small = min(filters, key=lambda k: abs(k - sigma))
                large = min(filters, key=lambda k: abs(k - 2 * sigma))
                dog = np.real(np.fft.ifft2(spectrum * (filters[small] - filters[large])))
                best = max(best, dog[lung].max())
            scores.append(best)
            labels.append(1 if nodules else 0)
    contrasts, ring_spreads = np.array(contrasts), np.array(ring_spreads)
    print(f"radiographs: {len(labels)}, with a nodule: {sum(labels)}")
    print(f"nodule minus ring, median: {np.median(contrasts):.0f} stored values")
    print(f"ring standard deviation, median: {np.median(ring_spreads):.0f}")
    print(f"nodules fainter than their ring's deviation: {(contrasts < ring_spreads).sum()} of {len(contrasts)}")
    print(f"difference-of-Gaussians blob detector, ROC AUC: {roc_auc(scores, labels):.3f}")


if __name__ == "__main__":
    main()
