// The API docs page's "try it" forms (inlined into /docs by experiments.paint.apidocs):
// each sends a GET of its path (path parameters filled in, empty fields left out) and shows the
// status and the indented JSON below the form.
for (const form of document.querySelectorAll('form.try')) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const out = form.querySelector('pre.out');
    const query = new URLSearchParams();
    let path = form.getAttribute('action');
    for (const input of form.querySelectorAll('input[name]')) {
      if (input.dataset.in === 'path') {
        path = path.replace('{' + input.name + '}', encodeURIComponent(input.value));
      } else if (input.value !== '') {
        query.append(input.name, input.value);
      }
    }
    const url = path + (query.toString() ? '?' + query : '');
    out.textContent = 'GET ' + url + ' ...';
    try {
      const response = await fetch(url);
      let text = await response.text();
      try { text = JSON.stringify(JSON.parse(text), null, 1); } catch (e) {}
      out.textContent = 'GET ' + url + ': ' + response.status + '\n' + text;
    } catch (error) {
      out.textContent = 'GET ' + url + ': ' + error;
    }
  });
}
