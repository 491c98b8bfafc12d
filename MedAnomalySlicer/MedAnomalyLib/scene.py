"""The module's scene: the image, heatmap, colour table and anomaly segmentation nodes of an MRML scene.

Imports only Slicer's MRML (desktop Slicer, or the `slicer-core` wheel) and this library, so the same code runs
in the Slicer module, in the web viewer and under pytest on a real `vtkMRMLScene`. Node references live in the
module's parameter node (a `vtkMRMLScriptedModuleNode`, the one `ScriptedLoadableModuleLogic.getParameterNode()`
returns), so a saved scene remembers which nodes are the module's.
"""
from __future__ import annotations

import numpy as np
import slicer
import vtk
from slicer.util import arrayFromVolume, arrayFromVTKMatrix, updateVolumeFromArray, vtkMatrixFromArray

from .errors import MedAnomalyError
from .heatmap import colour_lut, display_window, threshold_mask
from .volume import Volume, read_volume

MODULE_NAME = "MedAnomaly"
SEGMENT_ID = "anomaly"
SEGMENT_COLOUR = (1.0, 0.9, 0.1)
# Parameter node reference roles.
INPUT_ROLE = "InputVolume"
HEATMAP_ROLE = "AnomalyMap"
SEGMENTATION_ROLE = "AnomalySegmentation"
COLOURS_ROLE = "AnomalyColours"


def prepare_bare_scene(scene) -> dict:
    """What desktop Slicer's application does at start and a bare slicer-core scene lacks: default colour tables
    (labelmap colours) and the segmentation logic, which registers the labelmap <-> surface converters. Returns the
    logics, which must live as long as the scene."""
    colours = slicer.vtkMRMLColorLogic()
    colours.SetMRMLScene(scene)
    colours.AddDefaultColorNodes()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    return {"colours": colours, "segmentations": segmentations}


class AnomalyScene:
    """Creates and updates the module's nodes in `scene` (never the Qt views)."""

    def __init__(self, scene, parameter_node=None):
        self.scene = scene
        self.parameter_node = parameter_node if parameter_node is not None else self._find_parameter_node()

    # --- parameter node -----------------------------------------------------------------------------------------
    def _find_parameter_node(self):
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = self.scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)  # CreateNodeByClass hands over a reference: the scene keeps the only one
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node.SetSingletonTag(MODULE_NAME)
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = self.scene.AddNode(node)
        return node

    def _referenced(self, role):
        return self.parameter_node.GetNodeReference(role)

    def _reference(self, role, node) -> None:
        self.parameter_node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    @property
    def input_node(self):
        return self._referenced(INPUT_ROLE)

    @input_node.setter
    def input_node(self, node) -> None:
        self._reference(INPUT_ROLE, node)

    @property
    def heatmap_node(self):
        return self._referenced(HEATMAP_ROLE)

    @property
    def segmentation_node(self):
        return self._referenced(SEGMENTATION_ROLE)

    @property
    def colour_node(self):
        return self._referenced(COLOURS_ROLE)

    def parameter(self, name: str, default: str = "") -> str:
        return self.parameter_node.GetParameter(name) or default

    def set_parameter(self, name: str, value) -> None:
        self.parameter_node.SetParameter(name, "" if value is None else str(value))

    # --- volumes ------------------------------------------------------------------------------------------------
    def add_volume(self, volume: Volume, name: str, node=None):
        """A scalar volume node holding `volume` (array and geometry); `node` is updated in place when given."""
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            node.CreateDefaultDisplayNodes()
        node.SetIJKToRASMatrix(vtkMatrixFromArray(volume.ijk_to_ras))
        updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
        return node

    @staticmethod
    def volume_from_node(node) -> Volume:
        """The node's voxels and geometry as the workflow sends them (a colour film becomes grey)."""
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return Volume.from_slicer_array(arrayFromVolume(node).copy(), arrayFromVTKMatrix(matrix))

    def load_image(self, path, name: str | None = None):
        """Read a film or a volume file (SimpleITK formats) into a new input node, shown with a film's window."""
        volume = read_volume(path)
        node = self.add_volume(volume, name or _stem(path))
        self.input_node = node
        self.set_image_window(node)
        return node

    def set_image_window(self, node=None, percentiles=(1.0, 99.0)) -> tuple[float, float]:
        """Grey window over the image's 1st-99th percentile: films with burnt-in borders or markers stay readable."""
        node = node or self.input_node
        if node is None:
            raise MedAnomalyError("load an image first")
        values = arrayFromVolume(node)
        low, high = (float(v) for v in np.nanpercentile(values, percentiles))  # NaN pixels do not blank the film
        if not high > low:
            high = low + 1.0
        display = node.GetDisplayNode()
        if display is not None:
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(low, high)
        return low, high

    # --- anomaly map and segment --------------------------------------------------------------------------------
    def show_result(self, result, colour_map: str = "anomaly", transparent_below: float = 0.02,
                    threshold: float | None = None):
        """The heatmap as a coloured volume and the server's labelmap as the segment `anomaly` on the heatmap grid."""
        heatmap = self.add_volume(result.heatmap, f"AnomalyMap {result.model} {result.image_id}", self.heatmap_node)
        heatmap.SetName(f"AnomalyMap {result.model} {result.image_id}")
        self._reference(HEATMAP_ROLE, heatmap)
        segmentation = self.segmentation_node
        if segmentation is None:
            segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Anomaly")
            segmentation.CreateDefaultDisplayNodes()
            self._reference(SEGMENTATION_ROLE, segmentation)
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(heatmap)
        if segmentation.GetSegmentation().GetSegment(SEGMENT_ID) is None:
            segmentation.GetSegmentation().AddEmptySegment(SEGMENT_ID, "Anomaly", list(SEGMENT_COLOUR))
        self.set_parameter("Model", result.model)
        self.set_parameter("ImageId", result.image_id)
        self.show_mask(result.label.array)
        self.update_heatmap_display(colour_map, transparent_below,
                                    result.pixel_threshold if threshold is None else threshold)
        return heatmap

    def update_heatmap_display(self, colour_map: str, transparent_below: float, threshold: float | None) -> None:
        """Colour table over [threshold, 99.9th percentile]: whatever shows coloured is at least as anomalous as
        the current cut; values below the table's transparent start leave the film visible."""
        heatmap = self.heatmap_node
        if heatmap is None:
            return
        colours = self.colour_node
        table = f"{colour_map} {float(transparent_below):g}"
        if colours is None:
            colours = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "MedAnomalyHeat")
            colours.SetTypeToUser()
            colours.SetHideFromEditors(True)
            self._reference(COLOURS_ROLE, colours)
        if colours.GetAttribute("MedAnomaly.table") != table:  # a new table only when the colours changed
            lut = colour_lut(colour_map, 256, transparent_below)
            modifying = colours.StartModify()  # one Modified event for the table, not one per colour
            colours.SetNumberOfColors(len(lut))
            for index, (r, g, b, a) in enumerate(lut / 255.0):
                colours.SetColor(index, f"heat{index}", r, g, b, a)
            colours.SetAttribute("MedAnomaly.table", table)
            colours.EndModify(modifying)
        display = heatmap.GetDisplayNode()
        display.SetAndObserveColorNodeID(colours.GetID())
        display.SetAutoWindowLevel(False)
        lower, upper = display_window(arrayFromVolume(heatmap), threshold)
        display.SetWindowLevelMinMax(lower, upper)
        self.set_parameter("ColourMap", colour_map)
        self.set_parameter("TransparentBelow", transparent_below)
        self.set_parameter("Threshold", threshold)

    def show_threshold(self, threshold: float) -> np.ndarray:
        """Threshold the heatmap into the segment (heatmap >= threshold, the server's rule) and start the colours
        at the cut, with the colour map last shown; returns the mask."""
        heatmap = self.heatmap_node
        if heatmap is None:
            raise MedAnomalyError("compute an anomaly map first")
        mask = threshold_mask(arrayFromVolume(heatmap), threshold)
        self.show_mask(mask)
        self.update_heatmap_display(self.parameter("ColourMap", "anomaly"),
                                    float(self.parameter("TransparentBelow", "0.02")), threshold)
        return mask

    def show_mask(self, mask: np.ndarray) -> None:
        """Replace the segment's voxels with `mask` (heatmap grid, non-zero = anomaly)."""
        heatmap, segmentation = self.heatmap_node, self.segmentation_node
        if heatmap is None or segmentation is None:
            raise MedAnomalyError("compute an anomaly map first")
        mask = np.asarray(mask)
        if mask.shape != arrayFromVolume(heatmap).shape:
            raise MedAnomalyError(f"the mask {mask.shape} is not on the heatmap grid {arrayFromVolume(heatmap).shape}")
        labelmap = self._labelmap_like(heatmap, (mask > 0).astype(np.uint8))
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                    labelmap, segmentation, _segment_ids()):
                raise MedAnomalyError("the anomaly segment could not be updated (segmentation converters missing?)")
        finally:
            self.scene.RemoveNode(labelmap)

    def edited_mask(self) -> np.ndarray:
        """The segment as the annotator left it, as a uint8 array on the heatmap (= image) grid."""
        heatmap, segmentation = self.heatmap_node, self.segmentation_node
        if heatmap is None or segmentation is None:
            raise MedAnomalyError("compute an anomaly map first")
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medanomaly_export__")
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    segmentation, _segment_ids(), labelmap, heatmap):
                raise MedAnomalyError("the anomaly segment could not be read back")
            return (arrayFromVolume(labelmap) > 0).astype(np.uint8)
        finally:
            display = labelmap.GetDisplayNode()
            if display is not None:
                self.scene.RemoveNode(display)
            self.scene.RemoveNode(labelmap)

    def corrected_label(self) -> Volume:
        """The edited segment with the heatmap's geometry: what is submitted as the image's label."""
        return self.volume_from_node(self.heatmap_node).with_array(self.edited_mask())

    # --- slice views --------------------------------------------------------------------------------------------
    def show_in_slice_views(self, opacity: float) -> int:
        """Image as background, heatmap as foreground at `opacity`, in every slice view of the scene. Returns the
        number of views updated (none in a scene without views, such as a test's)."""
        composites = self.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        count = composites.GetNumberOfItems()
        for index in range(count):
            composite = composites.GetItemAsObject(index)
            if self.input_node is not None:
                composite.SetBackgroundVolumeID(self.input_node.GetID())
            if self.heatmap_node is not None:
                composite.SetForegroundVolumeID(self.heatmap_node.GetID())
            composite.SetForegroundOpacity(min(max(float(opacity), 0.0), 1.0))
        self.set_parameter("Opacity", opacity)
        return count

    # --- helpers ------------------------------------------------------------------------------------------------
    def _labelmap_like(self, reference, array: np.ndarray):
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medanomaly_import__")
        matrix = vtk.vtkMatrix4x4()
        reference.GetIJKToRASMatrix(matrix)
        labelmap.SetIJKToRASMatrix(matrix)
        updateVolumeFromArray(labelmap, array)
        return labelmap


def _segment_ids():
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(SEGMENT_ID)
    return ids


def _stem(path) -> str:
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".nii.gz", ".nrrd", ".nii", ".mha", ".dcm", ".jpeg", ".jpg", ".png"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
