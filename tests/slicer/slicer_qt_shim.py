"""Just enough of Slicer's Qt side to run the module's widget under pytest: `qt`, `slicer.ScriptedLoadableModule`,
`slicer.util.loadUI`/`childWidgetVariables`/`errorDisplay`, and `slicer.mrmlScene`.

Only the Qt widgets are imitated. `slicer` itself is the real slicer-core package, and `slicer.mrmlScene` a real
`vtkMRMLScene`, so everything the module does to nodes runs on Slicer's own MRML. Widgets are built from the
module's .ui file (class and name of each widget), hold their properties as attributes and remember which slots
were connected to which signal, so a test can "click" by emitting a signal.
"""
from __future__ import annotations

import sys
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import slicer
import slicer.util


class FakeWidget:
    """A Qt widget's properties as attributes and its signals as slot lists."""

    def __init__(self, name: str = "", qt_class: str = "QWidget"):
        self.objectName, self.qt_class = name, qt_class
        self.text, self.enabled, self.value, self.signals_blocked = "", True, 0.0, False
        self.slots: dict[str, list] = {}

    def connect(self, signal: str, slot) -> None:
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal: str, *args) -> None:
        if not self.signals_blocked:
            for slot in list(self.slots.get(signal, [])):
                slot(*args)

    def blockSignals(self, blocked: bool) -> bool:
        previous, self.signals_blocked = self.signals_blocked, bool(blocked)
        return previous

    def setMRMLScene(self, scene) -> None:
        self.mrmlScene = scene


class FakeComboBox(FakeWidget):
    def __init__(self, name="", qt_class="QComboBox"):
        super().__init__(name, qt_class)
        self.items: list[str] = []
        self.currentText = ""

    def addItems(self, items) -> None:
        self.items += [str(item) for item in items]
        self.currentText = self.currentText or (self.items[0] if self.items else "")

    def addItem(self, item) -> None:
        self.addItems([item])

    def clear(self) -> None:
        self.items, self.currentText = [], ""


class FakeSlider(FakeWidget):
    def __init__(self, name="", qt_class="ctkSliderWidget"):
        super().__init__(name, qt_class)
        self.minimum, self.maximum, self.singleStep, self.decimals = 0.0, 1.0, 0.01, 2


class FakeProgressBar(FakeWidget):
    def setRange(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum


class FakeNodeSelector(FakeWidget):
    node = None

    def currentNode(self):
        return self.node

    def setCurrentNode(self, node) -> None:
        self.node = node


WIDGET_CLASSES = {"QComboBox": FakeComboBox, "ctkSliderWidget": FakeSlider, "QProgressBar": FakeProgressBar,
                  "qMRMLNodeComboBox": FakeNodeSelector}


class FakeUI(FakeWidget):
    """The panel loaded from a .ui file: one fake widget per named widget, of the class the file gives."""

    def __init__(self, path: str):
        super().__init__("ui", "qMRMLWidget")
        self.children = {}
        for widget in ElementTree.parse(path).getroot().iter("widget"):
            kind = WIDGET_CLASSES.get(widget.get("class"), FakeWidget)
            self.children[widget.get("name")] = kind(widget.get("name"), widget.get("class"))


class FakeTimer(FakeWidget):
    active = False

    def setInterval(self, milliseconds) -> None:
        self.interval = milliseconds

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


class FakeSettings:
    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value) -> None:
        self.store[key] = value


class FakeLayout:
    def __init__(self):
        self.widgets = []

    def addWidget(self, widget) -> None:
        self.widgets.append(widget)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None, module_dir: str = ""):
        self.layout = FakeLayout()
        self.module_dir = Path(module_dir)
        self.reloaded = False

    def setup(self) -> None:
        pass

    def resourcePath(self, relative: str) -> str:
        return str(self.module_dir / "Resources" / relative)

    def onReload(self) -> None:
        self.reloaded = True  # desktop Slicer re-executes the module file here


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        pass


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleTest:
    pass


def install(scene, monkeypatch) -> list[str]:
    """Put the shims in place with pytest's `monkeypatch` (undone after the test), with `scene` as
    slicer.mrmlScene; returns the list the panel's error messages go to."""
    errors: list[str] = []
    qt = types.ModuleType("qt")
    qt.QTimer, qt.QSettings = FakeTimer, FakeSettings
    monkeypatch.setitem(sys.modules, "qt", qt)
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", module)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", module, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", FakeUI)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda ui: types.SimpleNamespace(**ui.children))
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda message, **kwargs: errors.append(message))
    return errors
