"""Static checks of the Slicer extension where Slicer is not installed: CMake files, Qt Designer UI, module file."""
from __future__ import annotations

import ast
import py_compile
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MedAnomalySlicer"
MODULE_FILE = MODULE_DIR / "MedAnomaly.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedAnomaly.ui"
CMAKE_CHECK = MODULE_DIR / "Testing" / "CheckExtension.cmake"


def ui_widgets() -> dict[str, str]:
    root = ElementTree.parse(UI_FILE).getroot()
    return {widget.get("name"): widget.get("class") for widget in root.iter("widget")}


def test_ui_is_qt_designer_xml_with_a_widget_tree():
    root = ElementTree.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and root.findtext("class") == top.get("name")
    names = [widget.get("name") for widget in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    # Every non-Qt class must be declared as a custom widget, or Qt Designer / slicer.util.loadUI cannot build it.
    declared = {custom.findtext("class") for custom in root.iter("customwidget")}
    used = {widget.get("class") for widget in root.iter("widget")}
    assert {name for name in used if not name.startswith("Q")} <= declared


def test_every_widget_the_module_uses_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    widgets = ui_widgets()
    assert used, "the module uses no widget of its .ui file"
    assert used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"
    # The workflow's controls are all wired up.
    for name in ("serverUrlLineEdit", "connectButton", "modelComboBox", "modelDescriptionLabel", "computeButton",
                 "thresholdSlider", "scoreLabel", "thresholdLabel", "submitCorrectionButton", "retrainButton",
                 "nextImageButton", "progressBar", "cancelButton"):
        assert name in used, name


def test_module_file_compiles_and_has_the_scripted_module_classes(tmp_path):
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "MedAnomaly.pyc"), doraise=True)
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    bases = {node.name: [ast.unparse(base) for base in node.bases] for node in tree.body
             if isinstance(node, ast.ClassDef)}
    assert bases["MedAnomaly"] == ["ScriptedLoadableModule"]
    assert bases["MedAnomalyWidget"] == ["ScriptedLoadableModuleWidget"]
    assert bases["MedAnomalyLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["MedAnomalyTest"] == ["ScriptedLoadableModuleTest"]


def test_library_imports_without_slicer_or_qt():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import MedAnomalyLib, MedAnomalyLib.logic; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('slicer', 'qt', 'ctk', 'vtk', 'PyQt5', 'PySide2', 'monailabel', 'medanomaly')); "
            "print(bad); sys.exit(1 if bad else 0)")
    answer = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True,
                            encoding="utf-8", errors="replace", timeout=60)
    assert answer.returncode == 0, answer.stdout + answer.stderr


def test_scene_logic_imports_only_mrml_and_the_library():
    tree = ast.parse((MODULE_DIR / "MedAnomalyLib" / "scene.py").read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported == {"__future__", "numpy", "slicer", "vtk"}, imported  # plus relative imports of the library


def run_cmake_check(source_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["cmake", f"-DSOURCE_DIR={source_dir}", "-P", str(CMAKE_CHECK)], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=60, cwd=source_dir)


@pytest.fixture(scope="module")
def cmake():
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not installed: the extension's CMake check needs it (apt-get install cmake)")


def test_cmake_files_pass_the_stubbed_slicer_check(cmake):
    answer = run_cmake_check(ROOT)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "check passed: MedAnomaly, modules: MedAnomaly" in answer.stdout + answer.stderr


def test_cmake_check_catches_missing_files_and_metadata(cmake, tmp_path):
    copy = tmp_path / "extension"
    copy.mkdir()
    shutil.copy(ROOT / "CMakeLists.txt", copy / "CMakeLists.txt")
    shutil.copytree(MODULE_DIR, copy / "MedAnomalySlicer", ignore=shutil.ignore_patterns("__pycache__"))
    assert run_cmake_check(copy).returncode == 0

    (copy / "MedAnomalySlicer" / "Resources" / "Icons" / "MedAnomaly.png").unlink()
    (copy / "MedAnomalySlicer" / "MedAnomalyLib" / "unlisted.py").write_text("", encoding="utf-8")
    root_cmake = copy / "CMakeLists.txt"
    root_cmake.write_text(re.sub(r'set\(EXTENSION_CATEGORY "[^"]*"\)', 'set(EXTENSION_CATEGORY "")',
                                 root_cmake.read_text(encoding="utf-8")))
    answer = run_cmake_check(copy)
    report = answer.stdout + answer.stderr
    assert answer.returncode != 0
    assert "Resources/Icons/MedAnomaly.png does not exist" in report
    assert "MedAnomalyLib/unlisted.py exists but is not listed" in report
    assert "EXTENSION_CATEGORY is not set" in report
