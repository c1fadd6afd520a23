// Progressive enhancement only: every page reads and works without this file.
"use strict";
(function () {
  function toast(text) {
    var box = document.getElementById("toast");
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { box.hidden = true; }, 2600);
  }

  // navigator.clipboard needs a secure context (https or localhost); a registry UI is
  // often plain http on a LAN address, so fall back to a selected textarea.
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      ok ? resolve() : reject(new Error("copy refused"));
    });
  }

  document.querySelectorAll(".btn-copy").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = button.getAttribute("data-copy") || "";
      copyText(text).then(function () {
        button.classList.add("copied");
        button.setAttribute("data-copied", text);
        var label = button.querySelector(".btn-copy-label");
        if (label) label.textContent = "Copied";
        toast("Copied: " + text);
        setTimeout(function () {
          button.classList.remove("copied");
          if (label) label.textContent = "Copy";
        }, 1800);
      }, function () {
        toast("Select the command and copy it by hand.");
      });
    });
  });

  // Tag selection: a select-all box and a live count on the delete button.
  var form = document.getElementById("tags-form");
  if (form) {
    var all = document.getElementById("select-all");
    var boxes = Array.prototype.slice.call(form.querySelectorAll('input[name="tag"]'));
    var count = document.getElementById("selection-count");
    var button = document.getElementById("delete-selected");
    var update = function () {
      var n = boxes.filter(function (b) { return b.checked; }).length;
      if (button) button.disabled = n === 0;
      if (count) count.textContent = n ? n + " selected" : "Select tags to delete them.";
      if (all) {
        all.checked = n > 0 && n === boxes.length;
        all.indeterminate = n > 0 && n < boxes.length;
      }
    };
    if (all) {
      all.hidden = false;
      all.addEventListener("change", function () {
        boxes.forEach(function (b) { b.checked = all.checked; });
        update();
      });
    }
    boxes.forEach(function (b) { b.addEventListener("change", update); });
    update();
  }
})();
