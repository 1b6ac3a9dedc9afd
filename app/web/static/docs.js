// Starts Swagger UI from the service's own copy; kept out of docs.html so that the page's
// Content-Security-Policy can forbid inline scripts.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // No call to the public validator service: nothing leaves this service.
    validatorUrl: null,
  });
});
