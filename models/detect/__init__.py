"""Face detection, 68-point landmarks and the crop geometry of the paper's preprocessing.

    detector = build_detector("dlib")                      # or "retinaface", network= its loaded network
    faces = detector.detect(frames)                         # uint8 [B, H, W, 3] RGB -> list[list[Face]] per frame
    chosen, counts = select_faces(faces)                    # one person per clip (None where they are not seen)
    boxes = smooth_boxes(crop_box(landmarks), sigma=2.0)    # landmarks [T, 68, 2] -> square crops [T, 4]
    crops = crop_faces(frames, boxes, size=256)             # uint8 [B, 256, 256, 3]
    crop_landmarks = landmarks_to_crop(landmarks, boxes, 256)
"""

from models.detect.align import crop_box, crop_faces, landmarks_to_crop, select_faces, smooth_boxes
from models.detect.base import DETECTORS, Face, FaceDetector, MissingWeightsError, build_detector

__all__ = [
    "DETECTORS", "Face", "FaceDetector", "MissingWeightsError", "build_detector",
    "crop_box", "crop_faces", "landmarks_to_crop", "select_faces", "smooth_boxes",
]
