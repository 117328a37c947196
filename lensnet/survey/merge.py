"""Overlapping detections -> one: by the position of what each tile saw (`merge_by_peak`, the default), or by
greedy non-maximum suppression on pixel boxes (`nms`, torchvision's rule; `--iou`)."""

from __future__ import annotations

import numpy as np


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one box (x0, y0, x1, y1) with each of `others` (N, 4)."""
    box, others = np.asarray(box, float), np.asarray(others, float).reshape(-1, 4)
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept, best score first: each box suppresses later ones overlapping it by > `iou`."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    boxes = np.asarray(boxes)
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou]
    return np.array(keep, dtype=np.int64)


def tile_peaks(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 2) pixel position (x, y) in the source image of each tile's brightest spot: the maximum of the
    band-summed tile smoothed by a Gaussian of a tenth of the tile (a noise spike is no source, and a lens's
    arcs and galaxy blend into one spot near its centre)."""
    from scipy.ndimage import gaussian_filter

    summed = np.nan_to_num(np.asarray(images, np.float64).sum(axis=-1))
    sigma = max(summed.shape[1:]) / 10
    smooth = gaussian_filter(summed, sigma=(0, sigma, sigma), mode="nearest")
    flat = smooth.reshape(len(smooth), -1).argmax(axis=1)
    ys, xs = np.unravel_index(flat, smooth.shape[1:])
    boxes = np.asarray(boxes).reshape(-1, 4)
    return np.stack([boxes[:, 0] + xs, boxes[:, 1] + ys], axis=1).astype(np.float64)


def merge_by_peak(peaks: np.ndarray, scores: np.ndarray, radius: float) -> np.ndarray:
    """Indices kept, best score first: a detection is merged into a better one whose tile's brightest spot
    lies within `radius` px of its own (both tiles saw the same object). Two lenses a tile apart have their
    own peaks and stay two candidates, where box overlap (`nms`) would merge the overlapping tiles."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    peaks = np.asarray(peaks, np.float64).reshape(-1, 2)
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[np.hypot(*(peaks[rest] - peaks[best]).T) > radius]
    return np.array(keep, dtype=np.int64)
